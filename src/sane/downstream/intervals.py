"""Rank and variance metrics of a probe's predictions with bootstrap intervals over models.

A test split holds several checkpoints of each model; they are not independent samples, so
the bootstrap resamples *models* (with replacement) and keeps all the checkpoints of each
drawn model. The interval is the percentile interval of the metric over ``resamples``
resamples (95 % by default). Kendall's τ is τ-b (ties, which resampling creates, handled as
in :func:`scipy.stats.kendalltau`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from sane.errors import ConfigError, FormatError

Metric = Callable[[np.ndarray, np.ndarray], float]


def r2(truth: np.ndarray, predicted: np.ndarray) -> float:
    """The coefficient of determination ``1 - SSE / SST`` (NaN when ``truth`` is constant)."""
    sst = float(((truth - truth.mean()) ** 2).sum())
    return float("nan") if sst == 0 else 1 - float(((truth - predicted) ** 2).sum()) / sst


def kendall_tau(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Kendall's τ-b between truth and predictions (NaN when either is constant)."""
    return float(stats.kendalltau(truth, predicted).statistic)


METRICS: dict[str, Metric] = {"r2": r2, "tau": kendall_tau}


def bootstrap_interval(truth: np.ndarray, predicted: np.ndarray, groups: Sequence[str],
                       metric: Metric, *, resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile interval of ``metric(truth, predicted)`` over ``resamples``
    bootstrap resamples of the ``groups`` (one model id per row: a drawn model brings all
    its rows). Resamples where the metric is undefined (NaN) are left out."""
    truth, predicted = np.asarray(truth, np.float64), np.asarray(predicted, np.float64)
    if truth.shape != predicted.shape or truth.ndim != 1 or len(groups) != len(truth):
        raise FormatError(f"truth, predictions and groups must be [n] alike, got "
                          f"{list(truth.shape)}, {list(predicted.shape)}, {len(groups)}")
    if resamples < 1 or not 0 < level < 1:
        raise ConfigError(f"bootstrap needs resamples >= 1 and a level in (0, 1), got "
                          f"{resamples} and {level}")
    names, index = np.unique(np.asarray(groups), return_inverse=True)
    rows = [np.flatnonzero(index == g) for g in range(len(names))]
    generator = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        drawn = np.concatenate([rows[g] for g in generator.integers(0, len(rows), len(rows))])
        values.append(metric(truth[drawn], predicted[drawn]))
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
