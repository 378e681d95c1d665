"""Out-of-distribution flags: is a model unlike the zoo a SANE was trained on?

A model is compared with the training split's checkpoints in one or more feature *spaces*:
``"SANE"``, its embedding (the mean token latent), and ``"sW-layer"``, its per-layer weight
statistics (:func:`sane.weights.baselines.sw_layer`). Every feature is standardized by the
reference's mean and standard deviation. In each space a reference checkpoint's
*nearest-neighbour distance* is its Euclidean distance to the nearest checkpoint of another
model (a model's own checkpoints would make it look close to the zoo), and the space's
threshold is the ``percentile`` (99 by default) of those distances. A query is flagged when,
in any space, its distance to the nearest reference checkpoint exceeds the threshold: it lies
farther from the zoo than 99 % of the zoo's models lie from each other, so a property predicted
for it extrapolates. Its ``distance`` is the largest ratio of distance to threshold over the
spaces (above 1: flagged).

Why two spaces (measured; docs/results.md, out-of-distribution flags): the SANE embedding
of CNN-s trained on digits with the zoo's own Fashion-MNIST recipe lies as close to the zoo
as its held-out models do, while their per-layer weight statistics lie beyond the
threshold.

Saved with a pretraining run as ``RUN/ood.json`` (thresholds, percentile, models) and one
``RUN/ood-<space>.npy`` per space (the reference features ``[M, d]`` float64).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sane import atomic
from sane.downstream.features import FeatureSet
from sane.errors import ConfigError, FormatError

FORMAT = "sane-ood-reference"
VERSION = 3
# What references of earlier versions lack: they are refused, with the way to rebuild them.
EARLIER = {1: "SANE distances only",
           2: "embeddings of haloed views; embeddings now average tiled views"}
SPACES = (FeatureSet.SANE, FeatureSet.SW_LAYER)


@dataclass(frozen=True)
class OODReference:
    """``features[space] [M, d]`` of the reference checkpoints, ``models[m]`` the model of row
    ``m``, and per space the flagging ``thresholds`` (the ``percentile`` of nearest-neighbour
    distances in standardized features). ``permutations``: how many random permutations the
    SANE embeddings average (:meth:`sane.pipeline.Pipeline.embed`); queries must be
    embedded alike."""

    features: dict[str, np.ndarray]
    models: list[str]
    thresholds: dict[str, float]
    percentile: float
    permutations: int = 0

    def __post_init__(self) -> None:
        if not self.features or set(self.features) - set(SPACES):
            raise ConfigError(f"out-of-distribution spaces must be some of {', '.join(SPACES)}, "
                              f"got {', '.join(sorted(self.features))}")
        for space, x in self.features.items():
            if x.ndim != 2 or len(x) != len(self.models) or not np.isfinite(x).all():
                raise FormatError(f"{space} reference features must be finite [M, d] with one "
                                  f"model per row, got {list(x.shape)} and {len(self.models)} "
                                  "models")
        if set(self.thresholds) != set(self.features):
            raise FormatError(f"thresholds for {', '.join(sorted(self.thresholds))}, "
                              f"features for {', '.join(sorted(self.features))}")

    @classmethod
    def fit(cls, features: Mapping[str, np.ndarray], models: Sequence[str],
            percentile: float = 99.0, permutations: int = 0) -> OODReference:
        """The reference of ``features[space] [M, d]`` (at least two models) whose SANE
        embeddings average ``permutations`` random permutations."""
        features = {s: np.asarray(x, dtype=np.float64) for s, x in features.items()}
        models = [str(m) for m in models]
        if len(set(models)) < 2:
            raise ConfigError("an out-of-distribution reference needs at least two models")
        if not 0 < percentile <= 100:
            raise ConfigError(f"percentile must lie in (0, 100], got {percentile}")
        same = np.asarray(models)[:, None] == np.asarray(models)[None, :]
        thresholds = {}
        for space, x in features.items():
            if x.ndim != 2:
                raise FormatError(f"{space} reference features must be [M, d], got "
                                  f"{list(x.shape)}")
            standardized = _standardized(x, x)
            distances = _pairwise(standardized, standardized)
            distances[same] = np.inf
            thresholds[space] = float(np.percentile(distances.min(axis=1), percentile))
        return cls(features, models, thresholds, percentile, permutations)

    def distances(self, queries: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{space: [Q]}``: each query's distance to its nearest reference checkpoint in
        every space of the reference; ``queries[space] [Q, d]``."""
        missing = [s for s in self.features if s not in queries]
        if missing:
            raise FormatError(f"the queries lack the {', '.join(missing)} features")
        out = {}
        for space, reference in self.features.items():
            q = np.asarray(queries[space], dtype=np.float64)
            if q.ndim != 2 or q.shape[1] != reference.shape[1]:
                raise FormatError(f"{space} queries must be [Q, {reference.shape[1]}], got "
                                  f"{list(q.shape)}")
            if not np.isfinite(q).all():
                raise FormatError(f"{space} queries hold non-finite values")
            out[space] = _pairwise(_standardized(q, reference),
                                   _standardized(reference, reference)).min(axis=1)
        if len({len(d) for d in out.values()}) != 1:
            raise FormatError("the queries hold different numbers of rows per space")
        return out

    def flags(self, queries: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
        """Per query ``{"distance", "ood", "spaces", "distances"}``: ``distance`` the largest
        ratio of distance to threshold over the spaces, ``ood`` whether it exceeds 1, ``spaces``
        those beyond their threshold, ``distances`` the distance in each space."""
        distances = self.distances(queries)
        ratios = {s: d / self.thresholds[s] for s, d in distances.items()}
        out = []
        for q in range(len(next(iter(distances.values())))):
            beyond = [s for s in ratios if ratios[s][q] > 1]
            out.append({"distance": float(max(r[q] for r in ratios.values())),
                        "ood": bool(beyond), "spaces": beyond,
                        "distances": {s: float(d[q]) for s, d in distances.items()}})
        return out

    def summary(self) -> dict[str, Any]:
        """What a report states about the reference: spaces, thresholds, percentile and the
        permutations its embeddings average."""
        return {"spaces": list(self.features), "thresholds": dict(self.thresholds),
                "percentile": self.percentile, "permutations": self.permutations}

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        for space, x in self.features.items():
            atomic.save_array(directory / f"ood-{space}.npy", x)
        atomic.write_json(directory / "ood.json", {
            "format": FORMAT, "version": VERSION, **self.summary(), "models": self.models})

    @classmethod
    def load(cls, directory: str | Path) -> OODReference | None:
        """The reference saved in ``directory``, or None when there is none."""
        directory = Path(directory)
        path = directory / "ood.json"
        if not path.is_file():
            return None
        stored = atomic.read_json(path)
        if isinstance(stored, dict) and stored.get("version") in EARLIER:
            old = "ood.npy" if stored["version"] == 1 else "ood-*.npy"
            raise FormatError(f"{path} is a reference of an earlier sane "
                              f"({EARLIER[stored['version']]}); remove {path} and "
                              f"{directory / old} and rerun the same `sane pretrain` command, "
                              "which rebuilds it without training")
        meta = atomic.read_manifest(path, FORMAT, VERSION)
        try:
            spaces = [FeatureSet(str(s)) for s in meta["spaces"]]
            if set(spaces) - set(SPACES):
                raise ValueError(f"unknown spaces {', '.join(spaces)}")
            models = [str(m) for m in meta["models"]]
            thresholds = {s: float(meta["thresholds"][s]) for s in spaces}
            percentile, permutations = float(meta["percentile"]), int(meta["permutations"])
        except (KeyError, TypeError, ValueError) as error:
            raise FormatError(f"{path}: malformed ({error!r})") from error
        features = {s: atomic.read_array(directory / f"ood-{s}.npy") for s in spaces}
        try:
            return cls(features, models, thresholds, percentile, permutations)
        except (TypeError, ValueError) as error:  # arrays that do not fit the manifest
            raise FormatError(f"{path}: malformed ({error})") from error

def _standardized(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``x [Q, d]`` less the mean of ``reference [M, d]``, over its standard deviation (1 for a
    feature constant over the reference)."""
    std = reference.std(axis=0)
    return (x - reference.mean(axis=0)) / np.where(std > 0, std, 1.0)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[len(a), len(b)]``."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0))
