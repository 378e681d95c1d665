"""MNIST-1D: a procedurally generated 1-D stand-in for MNIST (Greydanus, 2020).

Each example starts from one of ten hand-made templates (12 points per digit) and goes
through the original generator's chain: pad with a random number of zeros, stretch to a fixed
length, scale, shift circularly, fill the zero padding with smoothed (correlated) noise, add
i.i.d. noise, shear (add a random linear ramp), and resample to 40 points. The whole dataset is
then standardized by its global mean and standard deviation and split 4000/1000 train/test.

Random draws use NumPy's legacy ``RandomState`` in the same order as the reference
implementation (``greydanus/mnist1d``), so the default configuration reproduces its
``make_dataset()`` output; the data are generated, never downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sane.data.dataset import RawImages
from sane.errors import ConfigError

# One row per digit 0..9, as in the reference generator.
_TEMPLATES = (
    (5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5),
    (5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5),
    (5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5),
    (5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5),
    (5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5),
    (5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5),
    (5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5),
    (5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5),
    (5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5),
    (5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5),
)

# Added before padding so that the signal itself is never exactly zero: after the shift, exact
# zeros mark the padding, which is where the correlated noise goes.
_EPS = 1e-8


@dataclass(frozen=True)
class Mnist1dConfig:
    """Generator settings; the defaults are those of the reference ``get_dataset_args()``.

    ``padding``: inclusive range of zeros appended to the 12-point template; ``scale_coeff``:
    amplitude scaled by a factor uniform in ``1 ± scale_coeff / 2``; ``max_translation``:
    circular shift uniform in ``[0, max_translation)`` samples; ``corr_noise_scale``: std of the
    Gaussian noise smoothed (σ = 2 samples) into the padding; ``iid_noise_scale``: std of the
    noise added everywhere; ``shear_scale``: slope of the added ramp, uniform in
    ``±shear_scale / 2`` over the signal; ``length``: final number of samples.
    """

    num_samples: int = 5000
    train_fraction: float = 0.8
    padding: tuple[int, int] = (36, 60)
    scale_coeff: float = 0.4
    max_translation: int = 48
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 0.02
    shear_scale: float = 0.75
    length: int = 40
    seed: int = 42


def templates() -> np.ndarray:
    """The ten digit templates ``[10, 12]``: standardized, starting at 0, divided by 6."""
    x = np.asarray(_TEMPLATES, dtype=np.float64)
    x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    return (x - x[:, :1]) / 6.0


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_in, n_out]``: right-multiplying signals ``[N, n_in]`` (samples on [0, 1]) by it
    resamples them linearly to ``n_out`` equally spaced samples."""
    grid_in, grid_out = np.linspace(0.0, 1.0, n_in), np.linspace(0.0, 1.0, n_out)
    return np.stack([np.interp(grid_out, grid_in, unit) for unit in np.eye(n_in)])


def _check(cfg: Mnist1dConfig) -> None:
    low, high = cfg.padding
    if not 0 <= low <= high:
        raise ConfigError(f"mnist1d padding must satisfy 0 <= low <= high, got {cfg.padding}")
    if cfg.max_translation < 1 or cfg.length < 2 or cfg.num_samples < 10:
        raise ConfigError(
            "mnist1d needs max_translation >= 1, length >= 2 and num_samples >= 10, got "
            f"{cfg.max_translation}, {cfg.length}, {cfg.num_samples}"
        )
    if not 0 < cfg.train_fraction < 1:
        raise ConfigError(f"mnist1d train_fraction must lie in (0, 1), got {cfg.train_fraction}")


def generate_mnist1d(cfg: Mnist1dConfig = Mnist1dConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Generate the whole dataset: signals ``[N, length]`` float64 (global mean 0, std 1) and
    labels ``[N]`` int64, shuffled; ``N = num_samples // 10 * 10`` (equal classes)."""
    from scipy.ndimage import gaussian_filter1d

    _check(cfg)
    digits = templates()  # [10, T]
    low, high = cfg.padding
    width = digits.shape[1] + high  # every padded template is stretched to this many samples
    labels = np.repeat(np.arange(len(digits), dtype=np.int64), cfg.num_samples // len(digits))
    n = len(labels)

    # The reference implementation seeds NumPy's global legacy generator and draws per example
    # in this order; RandomState replays the same stream without touching global state.
    rng = np.random.RandomState(cfg.seed)
    pads = np.empty(n, dtype=np.int64)
    shifts = np.empty(n, dtype=np.int64)
    scales, shears = np.empty(n), np.empty(n)
    corr_noise, iid_noise = np.empty((n, width)), np.empty((n, width))
    for i in range(n):
        pads[i] = low + int(rng.rand() * (high - low + 1))
        scales[i] = 1 + cfg.scale_coeff * (rng.rand() - 0.5)
        shifts[i] = rng.choice(cfg.max_translation)
        corr_noise[i] = cfg.corr_noise_scale * rng.randn(width)
        iid_noise[i] = cfg.iid_noise_scale * rng.randn(width)
        shears[i] = cfg.shear_scale * (rng.rand() - 0.5)
    order = rng.permutation(n)

    # Pad each template with its number of zeros, then stretch it to `width` samples; signals
    # with the same padding share one interpolation matrix.
    x = np.empty((n, width))
    for pad in np.unique(pads):
        rows = pads == pad
        padded = np.pad(digits[labels[rows]] + _EPS, ((0, 0), (0, pad)))
        x[rows] = padded @ _interpolation_matrix(padded.shape[1], width)
    x = x * scales[:, None]
    x = np.take_along_axis(x, (np.arange(width) - shifts[:, None]) % width, axis=1)  # roll
    x = np.where(x == 0, gaussian_filter1d(corr_noise, 2.0, axis=1), x)
    x = x + iid_noise
    x = x - shears[:, None] * np.linspace(-0.5, 0.5, width)
    x = x @ _interpolation_matrix(width, cfg.length)

    x, labels = x[order], labels[order]
    return (x - x.mean()) / x.std(), labels


def read_mnist1d(cfg: Mnist1dConfig = Mnist1dConfig()) -> RawImages:
    """MNIST-1D as :class:`RawImages`: x ``[N, 1, length]`` (4000 train / 1000 test by default)."""
    x, y = generate_mnist1d(cfg)
    cut = int(len(y) * cfg.train_fraction)
    return RawImages(
        train_x=x[:cut, None], train_y=y[:cut], test_x=x[cut:, None], test_y=y[cut:],
        num_classes=10, source=f"generated (MNIST-1D, seed {cfg.seed})", scale=1.0,
    )
