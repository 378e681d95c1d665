"""Linear probes: ridge regression from model features to a model property.

A probe is fitted on the training split with each regularization strength of ``alphas``
and keeps the one with the best R² on the validation split (SANE's protocol), then reports R²
on every split. Features are standardized with the training split's statistics first, so one
grid of strengths fits embeddings, raw weights and weight statistics alike, and the intercept
is not regularized (the reference code appended a column of ones and shrank it too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from sane import markdown
from sane.downstream.intervals import METRICS, bootstrap_interval, kendall_tau, r2
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


@dataclass(frozen=True)
class Predicted:
    """A property predicted by a model trained on its own (e.g. the NFN probe) rather than
    by a ridge probe on features: ``values`` ``[M]`` for every row (each split's training,
    validation or test predictions), ``selected`` what the validation split chose (reported
    in its row) and ``extra`` ``[Q]`` its predictions for further models, if any."""

    values: np.ndarray
    selected: Mapping[str, Any]
    extra: np.ndarray | None = None


@dataclass(frozen=True)
class ProbeRow:
    """One regression probe, ``features`` → ``property``: R², Kendall τ and the number of
    rows on each split; on the test split the 95 % bootstrap intervals over test models
    (None where undefined: fewer than 3 models), the rows scored, their true and predicted
    values. A ridge probe records its ``alpha``, a predictor trained on its own what
    validation ``selected``; ``extra_predicted`` holds the predictions for further models."""

    features: str
    property: str
    r2_train: float
    r2_val: float
    r2_test: float
    tau_train: float
    tau_val: float
    tau_test: float
    n_train: int
    n_val: int
    n_test: int
    r2_test_ci: list[float] | None
    tau_test_ci: list[float] | None
    test_rows: list[int]
    test_truth: list[float]
    test_predicted: list[float]
    alpha: float | None = None
    selected: dict[str, Any] | None = None
    extra_predicted: list[float] | None = None

    def test(self, metric: str) -> tuple[float, list[float] | None]:
        """The test score of ``metric`` ("r2" or "tau") and its interval."""
        return getattr(self, f"{metric}_test"), getattr(self, f"{metric}_test_ci")

    def to_dict(self) -> dict[str, Any]:
        """The row as ``probes.json`` holds it, without the keys that do not apply."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v is not None or k not in ("alpha", "selected", "extra_predicted")}


@dataclass(frozen=True)
class ClassRow:
    """One classification probe, ``features`` → the categorical ``property``: its inverse
    strength ``C``, the training split's ``classes``, accuracy per split and the test
    accuracy of the training split's majority class."""

    features: str
    property: str
    C: float
    classes: list[str]
    accuracy_train: float
    accuracy_val: float
    accuracy_test: float
    majority_test: float


def probe_table(
    features: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    splits: Mapping[str, np.ndarray],
    groups: Sequence[str],
    alphas: Sequence[float] = ALPHAS,
    *,
    resamples: int = 1000,
    extra: Mapping[str, np.ndarray] | None = None,
    predicted: Mapping[str, Mapping[str, Predicted]] | None = None,
) -> list[ProbeRow]:
    """Fit one probe per (feature set, property) and report R² and Kendall τ per split, with
    bootstrap 95 % intervals over the test split's *models* (:mod:`sane.downstream.intervals`).

    ``features[name]`` is ``[M, F]``; ``targets[property]`` ``[M]`` (NaN where unknown: those
    rows are left out for that property); ``splits`` maps "train", "val" and "test" to row
    indices; ``groups[m]`` is the model of row ``m``. Returns one :class:`ProbeRow` per
    (property, feature set); with ``extra`` (features of further models per feature set,
    ``[Q, F]``), also their predictions. ``predicted[name][property]`` adds the rows of a
    predictor trained on its own, scored alike, with ``selected`` in place of ``alpha``.
    """
    groups = np.asarray(groups)
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
            scores = _scores(y, known, groups,
                             {s: probe.predict(x[idx]) for s, idx in known.items()}, resamples)
            rows.append(ProbeRow(
                name, prop, **scores, alpha=probe.alpha_,
                extra_predicted=None if extra is None else probe.predict(extra[name]).tolist()))
        for name, by_property in (predicted or {}).items():
            given = by_property[prop]
            scores = _scores(y, known, groups, {s: given.values[idx] for s, idx in known.items()},
                             resamples)
            rows.append(ProbeRow(
                name, prop, **scores, selected=dict(given.selected),
                extra_predicted=None if given.extra is None else given.extra.tolist()))
    return rows


def _scores(y: np.ndarray, known: Mapping[str, np.ndarray], groups: np.ndarray,
            predicted: Mapping[str, np.ndarray], resamples: int) -> dict[str, Any]:
    """R², τ and the row count per split of the predictions ``predicted[split]`` of the
    rows ``known[split]``; on the test split the bootstrap intervals and the predictions."""
    scores: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        idx = known[split]
        scores[f"r2_{split}"] = r2(y[idx], predicted[split])
        scores[f"tau_{split}"] = kendall_tau(y[idx], predicted[split])
        scores[f"n_{split}"] = len(idx)
    test = known["test"]
    for metric in ("r2", "tau"):
        interval = bootstrap_interval(y[test], predicted["test"], groups[test],
                                      METRICS[metric], resamples=resamples)
        # None where undefined (fewer than 3 test models)
        scores[f"{metric}_test_ci"] = None if np.isnan(interval[0]) else list(interval)
    return scores | {"test_rows": test.tolist(), "test_truth": y[test].tolist(),
                     "test_predicted": predicted["test"].tolist()}


# Table 1 of the paper: properties as rows, feature sets as columns (W, s(W), SANE).
PROPERTY_LABELS = {"test_acc": "Acc", "epoch": "Ep", "ggap": "GGap"}


def markdown_table(rows: Sequence[ProbeRow], metric: str = "r2") -> str:
    """The probe results in the layout of SANE's Table 1: one line per property (Acc, Ep,
    GGap), one column per feature set (W, the s(W) variants, the SANE ones, then any other); each
    cell the test ``metric`` ("r2" or "tau") with its bootstrap 95 % interval."""
    names = sorted(dict.fromkeys(r.features for r in rows), key=_column_order)
    props = list(dict.fromkeys(r.property for r in rows))
    cell = {(r.property, r.features): r for r in rows}

    def text(r: ProbeRow) -> str:
        score, interval = r.test(metric)
        if interval is None:
            return f"{score:.3f} (no interval: < 3 models)"
        return f"{score:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]"

    return markdown.table(["property", *names], [
        [PROPERTY_LABELS.get(prop, prop), *(text(cell[prop, n]) for n in names)]
        for prop in props])


def _column_order(name: str) -> tuple[int, str]:
    rank = 0 if name == "W" else 1 if name.startswith("sW") else 2 if name.startswith("SANE") \
        else 3
    return rank, name


CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def class_probe_table(
    features: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    splits: Mapping[str, np.ndarray],
    cs: Sequence[float] = CS,
) -> list[ClassRow]:
    """Classification probes for categorical properties (hyperparameters such as the
    activation): one logistic regression per (feature set, property) on standardized
    features, its inverse strength ``C`` chosen by validation accuracy. ``labels[name]`` is
    ``[M]`` (strings); a property with one class in the training split is left out. One
    :class:`ClassRow` per (property, feature set): the majority class of the training split,
    scored on the test split, is the baseline."""
    from sklearn.linear_model import LogisticRegression

    rows = []
    train, val, test = splits["train"], splits["val"], splits["test"]
    for prop, y in labels.items():
        y = np.asarray(y).astype(str)
        classes, counts = np.unique(y[train], return_counts=True)
        if len(classes) < 2:
            continue
        majority = classes[counts.argmax()]
        for name, x in features.items():
            best = None
            for c in cs:
                model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
                model.fit(x[train], y[train])
                score = float((model.predict(x[val]) == y[val]).mean())
                if best is None or score > best[0]:
                    best = (score, c, model)
            _, c, model = best
            accuracy = {f"accuracy_{split}": float((model.predict(x[idx]) == y[idx]).mean())
                        for split, idx in splits.items()}
            rows.append(ClassRow(name, prop, c, classes.tolist(), **accuracy,
                                 majority_test=float((y[test] == majority).mean())))
    return rows


def class_markdown_table(rows: Sequence[ClassRow]) -> str:
    """Test accuracy of each classification probe beside the majority-class baseline."""
    names = sorted(dict.fromkeys(r.features for r in rows), key=_column_order)
    props = list(dict.fromkeys(r.property for r in rows))
    cell = {(r.property, r.features): r for r in rows}
    return markdown.table(
        ["property", "classes", "majority class", *names],
        [[prop, len(cell[prop, names[0]].classes), cell[prop, names[0]].majority_test,
          *(cell[prop, n].accuracy_test for n in names)] for prop in props], digits=3)
