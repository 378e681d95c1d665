"""Linear probes: ridge regression from model features to a model property.

A probe is fitted on the training split with each regularization strength of ``alphas``
and keeps the one with the best R² on the validation split (SANE's protocol), then reports R²
on every split. Features are standardized with the training split's statistics first, so one
grid of strengths fits embeddings, raw weights and weight statistics alike, and the intercept
is not regularized (the reference code appended a column of ones and shrank it too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from sane import markdown
from sane.errors import ConfigError, FormatError

ALPHAS = (1e3, 3e2, 1e2, 3e1, 1e1, 3.0, 1.0, 0.3, 0.1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4,
          3e-5, 1e-5)


class LinearProbe:
    """Ridge regression with the regularization chosen on a validation split.

    ``fit(x [M, F], y [M], validation=(x_val, y_val))``; ``predict(x) -> [M]``;
    ``score(x, y)`` is R². After fitting, ``alpha_`` is the chosen strength and
    ``validation_score_`` its validation R².
    """

    def __init__(self, alphas: Sequence[float] = ALPHAS) -> None:
        if not alphas or any(a <= 0 for a in alphas):
            raise ConfigError(f"alphas must be positive strengths, got {list(alphas)}")
        self.alphas = tuple(alphas)

    def fit(self, x: np.ndarray, y: np.ndarray, *,
            validation: tuple[np.ndarray, np.ndarray]) -> LinearProbe:
        x, y = _check(x, y, "training")
        x_val, y_val = _check(*validation, "validation")
        if x_val.shape[1] != x.shape[1]:
            raise FormatError(f"validation features have {x_val.shape[1]} columns, training "
                              f"features {x.shape[1]}")
        best: tuple[float, float, Pipeline] | None = None
        for alpha in self.alphas:
            pipeline = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x, y)
            score = r2_score(y_val, pipeline.predict(x_val))
            if best is None or score > best[0]:
                best = (score, alpha, pipeline)
        self.validation_score_, self.alpha_, self.pipeline_ = best
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "pipeline_"):
            raise ConfigError("fit the probe before predicting")
        return self.pipeline_.predict(_check(x, None, "input")[0])

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        """R² of the predictions for ``x`` against ``y``."""
        x, y = _check(x, y, "scored")
        return float(r2_score(y, self.predict(x)))


def _check(x: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise FormatError(f"{what} features must be [M, F] with M >= 2, got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise FormatError(f"{what} features hold NaN or infinite values")
    if y is None:
        return x, None
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (x.shape[0],):
        raise FormatError(f"{what} targets must be [{x.shape[0]}], got {list(y.shape)}")
    if not np.isfinite(y).all():
        raise FormatError(f"{what} targets hold NaN or infinite values")
    return x, y


def probe_table(
    features: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    splits: Mapping[str, np.ndarray],
    alphas: Sequence[float] = ALPHAS,
) -> list[dict[str, Any]]:
    """Fit one probe per (feature set, property) and report its R² per split.

    ``features[name]`` is ``[M, F]``; ``targets[property]`` ``[M]`` (NaN where unknown: those
    rows are left out for that property); ``splits`` maps "train", "val" and "test" to row
    indices. Returns rows ``{"features", "property", "alpha", "r2_train", "r2_val", "r2_test",
    "n_train", "n_val", "n_test"}``.
    """
    rows = []
    for prop, y in targets.items():
        known = {s: idx[np.isfinite(y[idx])] for s, idx in splits.items()}
        for split in ("train", "val", "test"):
            if len(known[split]) < 2:
                raise FormatError(f"property {prop!r}: the {split} split has "
                                  f"{len(known[split])} rows with a value; a probe needs 2")
        for name, x in features.items():
            train, val = known["train"], known["val"]
            probe = LinearProbe(alphas).fit(x[train], y[train], validation=(x[val], y[val]))
            row: dict[str, Any] = {"features": name, "property": prop, "alpha": probe.alpha_}
            for split in ("train", "val", "test"):
                idx = known[split]
                row[f"r2_{split}"] = probe.score(x[idx], y[idx])
                row[f"n_{split}"] = len(idx)
            rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The probe results as a Markdown table: one line per property, one column per feature
    set, test R² (validation R² in parentheses)."""
    names = list(dict.fromkeys(r["features"] for r in rows))
    props = list(dict.fromkeys(r["property"] for r in rows))
    cell = {(r["property"], r["features"]): r for r in rows}
    return markdown.table(["property", *names], [
        [prop, *(f"{cell[prop, n]['r2_test']:.3f} ({cell[prop, n]['r2_val']:.3f})"
                 for n in names)] for prop in props])
