"""Spectral layer metrics in the style of WeightWatcher (Martin, Peng & Mahoney, 2021),
computed from the weights alone.

For a layer's weight matrix ``W`` (a Linear ``[out, in]``; a convolution ``[out, in, k...]``
contributes one ``[out, in]`` matrix per kernel position, pooled into one spectrum, as
WeightWatcher does by default), the empirical spectral density (ESD) is the set of
eigenvalues of ``W Wᵀ``, i.e. the squared singular values. Reported per layer:

- ``log_spectral_norm``: ``log10(λ_max)``, the log of the squared largest singular value;
- ``alpha``: the exponent of a power law ``p(λ) ∝ λ^-alpha`` fitted to the ESD's tail by
  maximum likelihood, the tail's start ``λ_min`` chosen to minimize the Kolmogorov-Smirnov
  distance between the tail and the fit (Clauset, Shalizi & Newman, 2009);
- ``alpha_weighted``: ``alpha · log10(λ_max)``.

Layers whose ESD has fewer than ``min_evals`` eigenvalues get no ``alpha`` (a power law fit to
a handful of points means nothing; WeightWatcher's default is 50).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sane.errors import FormatError

MIN_EVALS = 50


@dataclass(frozen=True)
class PowerLawFit:
    """``alpha`` of ``p(λ) ∝ λ^-alpha`` for ``λ >= xmin``, over ``tail`` eigenvalues, with
    Kolmogorov-Smirnov distance ``ks``."""

    alpha: float
    xmin: float
    tail: int
    ks: float


def spectrum(weight: torch.Tensor) -> np.ndarray:
    """The ESD of a Linear or convolution weight: squared singular values, sorted, float64."""
    if weight.ndim < 2:
        raise FormatError(f"a spectrum needs a matrix or a convolution kernel, got shape "
                          f"{list(weight.shape)}")
    w = weight.detach().to(torch.float64)
    if not torch.isfinite(w).all():
        raise FormatError("the weight holds non-finite values")
    slices = w.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1)  # [positions, out, in]
    return np.sort((torch.linalg.svdvals(slices).flatten() ** 2).numpy())


def fit_power_law(evals: np.ndarray, min_tail: int = 10) -> PowerLawFit:
    """Maximum-likelihood power law over the tail ``λ >= xmin`` of ``evals`` (positive values),
    ``xmin`` among the values that leave at least ``min_tail`` points in the tail."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > 0]
    if len(x) < min_tail:
        raise FormatError(f"a power law fit needs at least {min_tail} positive eigenvalues, "
                          f"got {len(x)}")
    best: PowerLawFit | None = None
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # sum of log(x[i:]) for every i
    for i in range(len(x) - min_tail + 1):
        n = len(x) - i
        denominator = suffix[i] - n * logs[i]
        if denominator <= 0:
            continue  # every tail value equals xmin: no exponent
        alpha = 1 + n / denominator
        tail = x[i:]
        fitted = 1 - (tail / x[i]) ** (1 - alpha)  # the fit's CDF at each tail value
        empirical = np.arange(1, n + 1) / n
        ks = float(np.max(np.maximum(np.abs(empirical - fitted),
                                     np.abs(empirical - 1 / n - fitted))))
        if best is None or ks < best.ks:
            best = PowerLawFit(float(alpha), float(x[i]), n, ks)
    if best is None:
        raise FormatError("the eigenvalues are all equal: no power law to fit")
    return best


def layer_metrics(weight: torch.Tensor, min_evals: int = MIN_EVALS) -> dict[str, float]:
    """``{"log_spectral_norm", "alpha", "alpha_weighted", "evals"}`` of one layer; alpha
    and alpha_weighted are NaN when the ESD has fewer than ``min_evals`` eigenvalues."""
    evals = spectrum(weight)
    top = float(evals[-1])
    log_norm = math.log10(top) if top > 0 else float("-inf")
    alpha = fit_power_law(evals).alpha if len(evals) >= min_evals else float("nan")
    return {"log_spectral_norm": log_norm, "alpha": alpha, "alpha_weighted": alpha * log_norm,
            "evals": float(len(evals))}
