"""In-memory image-classification datasets with a seeded train/validation/test split.

A reader returns :class:`RawImages` (the arrays as stored, official test set if there is one);
:func:`assemble` turns them into a :class:`Dataset`: scaled to [0, 1], optionally converted to
grayscale and resized, split deterministically, and normalized per channel with the
published constants or with statistics of the training split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from sane.errors import ConfigError, FormatError

# Luminance weights of ITU-R BT.601, as used by PIL's "L" conversion.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class RawImages:
    """Arrays as a reader found them.

    ``train_x``/``test_x``: ``[N, C, H, W]`` (images) or ``[N, C, L]`` (signals), any real
    dtype; dividing by ``scale`` maps them to [0, 1]. ``train_y``/``test_y``: ``[N]`` integer
    labels in ``[0, num_classes)``. ``mean``/``std``: published per-channel normalization
    constants on the [0, 1] scale, or ``None`` to use statistics of the training split.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    num_classes: int
    source: str
    scale: float = 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Split:
    """One split: ``x`` float32 ``[N, C, H, W]`` or ``[N, C, L]``, ``y`` int64 ``[N]``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> Split:
        """The first ``n`` examples (all when ``n`` is None); the split is already shuffled."""
        return self if n is None else Split(self.x[:n], self.y[:n])

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.y, minlength=num_classes).tolist()


@dataclass(frozen=True)
class Dataset:
    """A dataset with its three splits and the normalization that was applied."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    seed: int
    split_note: str = field(default="")

    def split(self, name: str) -> Split:
        """The split called ``name``: "train", "val" or "test"."""
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split must be train, val or test, got {name!r}")
        return getattr(self, name)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, ``(C, H, W)`` or ``(C, L)``."""
        return tuple(self.train.x.shape[1:])


def _check_raw(raw: RawImages, name: str) -> None:
    pairs = [("train", raw.train_x, raw.train_y)]
    if raw.test_x is not None or raw.test_y is not None:
        if raw.test_x is None or raw.test_y is None:
            raise FormatError(f"{name}: test images and labels must both be given")
        pairs.append(("test", raw.test_x, raw.test_y))
    for split, x, y in pairs:
        if x.ndim not in (3, 4):
            raise FormatError(f"{name} {split}: expected [N, C, H, W] or [N, C, L], got {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise FormatError(f"{name} {split}: {len(x)} inputs but labels of shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= raw.num_classes):
            raise FormatError(
                f"{name} {split}: labels must lie in [0, {raw.num_classes}), "
                f"found [{y.min()}, {y.max()}]"
            )
        if x.shape[1:] != raw.train_x.shape[1:]:
            raise FormatError(f"{name}: train and {split} inputs differ in shape")


def _to_float(x: np.ndarray, scale: float, what: str) -> torch.Tensor:
    """A new float32 tensor ``x / scale`` (never a view of ``x``: callers modify it in place)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32, copy=True).div_(scale)
    # Integer pixels are always finite; only floating-point inputs need the (costly) check.
    if not np.issubdtype(x.dtype, np.integer) and not torch.isfinite(t).all():
        raise FormatError(f"{what}: inputs contain NaN or infinite values (after / {scale})")
    return t


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ConfigError(f"grayscale needs 1 or 3 channels, got {x.shape[1]}")
    w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype).view(1, 3, *([1] * (x.ndim - 2)))
    return (x * w).sum(dim=1, keepdim=True)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.ndim != 4:
        raise ConfigError("size applies to images [N, C, H, W] only")
    if x.shape[-2:] == (size, size):
        return x
    out = torch.empty(x.shape[0], x.shape[1], size, size, dtype=x.dtype)
    for i in range(0, len(x), 4096):  # bounded memory for large datasets
        out[i : i + 4096] = F.interpolate(
            x[i : i + 4096], size=(size, size), mode="bilinear", align_corners=False,
            antialias=True,
        )
    return out


def _split_indices(sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """A seeded permutation of ``range(sum(sizes))`` cut into parts of the given sizes."""
    # Integer sizes, not fractions: cumulative float fractions such as 0.7 + 0.15 round down
    # and would move an example from one split to the next.
    order = np.random.default_rng(seed).permutation(sum(sizes))
    return np.split(order, np.cumsum(sizes)[:-1])


def _published_constants(
    raw: RawImages, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The published normalization constants for ``channels`` channels, if they apply."""
    if raw.mean is None or raw.std is None:
        return None
    if len(raw.mean) == channels:
        return tuple(raw.mean), tuple(raw.std)
    # After grayscale conversion, constants equal across the colour channels still apply: the
    # Model Zoos generators normalize grayscale SVHN with the same (0.5, 0.5) as colour data.
    if channels == 1 and len(set(raw.mean)) == 1 and len(set(raw.std)) == 1:
        return (raw.mean[0],), (raw.std[0],)
    return None


def assemble(
    raw: RawImages,
    name: str,
    *,
    size: int | None = None,
    grayscale: bool = False,
    val_fraction: float = 1 / 6,
    seed: int = 0,
) -> Dataset:
    """Split, convert and normalize ``raw`` into a :class:`Dataset`.

    With an official test set, the validation split is a seeded ``val_fraction`` of the
    official training set; without one, the data are split 70/15/15 (seeded). Splits are
    shuffled by the same permutation, so ``Split.head(n)`` is a random subset.
    """
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if size is not None and size < 1:
        raise ConfigError(f"size must be positive, got {size}")
    _check_raw(raw, name)
    x = _to_float(raw.train_x, raw.scale, f"{name} train")
    y = torch.from_numpy(np.asarray(raw.train_y, dtype=np.int64))
    if raw.test_x is None:
        val_n = test_n = round(0.15 * len(y))
        sizes = (len(y) - val_n - test_n, val_n, test_n)
        train_idx, val_idx, test_idx = _split_indices(sizes, seed)
        parts = [(x[i], y[i]) for i in (train_idx, val_idx, test_idx)]
        note = "70/15/15 of all examples (seeded)"
    else:
        val_n = round(val_fraction * len(y))
        train_idx, val_idx = _split_indices((len(y) - val_n, val_n), seed)
        test_x = _to_float(raw.test_x, raw.scale, f"{name} test")
        test_y = torch.from_numpy(np.asarray(raw.test_y, dtype=np.int64))
        parts = [(x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]), (test_x, test_y)]
        note = f"validation = {val_n} of the official training set (seeded); test = official"
    if grayscale:
        parts = [(_grayscale(px), py) for px, py in parts]
    if size is not None:
        parts = [(_resize(px, size), py) for px, py in parts]

    train_x = parts[0][0]
    channels = train_x.shape[1]
    reduce_dims = [0, *range(2, train_x.ndim)]
    published = _published_constants(raw, channels)
    if published is not None:
        mean, std = published
    else:
        # Summed in float64 and rounded to the float32 that normalizes: a float32 sum
        # depends on how the threads split it, and the statistics must not (a zoo resumed
        # with another thread count trains on the same inputs).
        wide = train_x.double()
        stats = torch.stack([wide.mean(dim=reduce_dims),
                             wide.std(dim=reduce_dims).clamp_min(1e-8)]).float()
        del wide
        mean, std = tuple(stats[0].tolist()), tuple(stats[1].tolist())
    shape = (1, channels, *([1] * (train_x.ndim - 2)))
    m, s = torch.tensor(mean).view(shape), torch.tensor(std).view(shape)
    # In place: every part is a fresh tensor (indexing, conversion and resizing copy).
    train, val, test = (Split(px.sub_(m).div_(s), py) for px, py in parts)
    return Dataset(
        name=name, train=train, val=val, test=test, num_classes=raw.num_classes,
        mean=mean, std=std, source=raw.source, seed=seed, split_note=note,
    )
