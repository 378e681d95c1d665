"""Out-of-distribution flags for embeddings: is a model unlike the zoo SANE was trained on?

The reference is the embeddings of the training split's checkpoints. Each reference
checkpoint's *nearest-neighbour distance* is its Euclidean distance to the nearest
checkpoint of another model (a model's own checkpoints would make it look close to the zoo).
The threshold is the ``percentile`` (99 by default) of those distances. A query embedding
is flagged when its distance to the nearest reference checkpoint exceeds the threshold: it
lies farther from the zoo than 99 % of the zoo's models lie from each other, so a property
predicted for it extrapolates.

Saved with a pretraining run as ``RUN/ood.json`` (threshold, percentile, models) and
``RUN/ood.npy`` (the reference embeddings ``[M, d_z]`` float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sane import atomic
from sane.errors import ConfigError, FormatError

FORMAT = "sane-ood-reference"
VERSION = 1


@dataclass(frozen=True)
class OODReference:
    """``embeddings [M, d_z]`` of the reference checkpoints, ``models[m]`` the model of row
    ``m``, and the flagging ``threshold`` (the ``percentile`` of nearest-neighbour
    distances)."""

    embeddings: np.ndarray
    models: list[str]
    threshold: float
    percentile: float

    @classmethod
    def fit(cls, embeddings: np.ndarray, models: Sequence[str], percentile: float = 99.0
            ) -> OODReference:
        """The reference of ``embeddings [M, d_z]`` (at least two models)."""
        embeddings = np.asarray(embeddings, dtype=np.float64)
        models = [str(m) for m in models]
        if embeddings.ndim != 2 or len(models) != len(embeddings):
            raise FormatError(f"embeddings must be [M, d] with one model per row, got "
                              f"{list(embeddings.shape)} and {len(models)} models")
        if len(set(models)) < 2:
            raise ConfigError("an out-of-distribution reference needs at least two models")
        if not 0 < percentile <= 100:
            raise ConfigError(f"percentile must lie in (0, 100], got {percentile}")
        distances = _pairwise(embeddings, embeddings)
        same = np.asarray(models)[:, None] == np.asarray(models)[None, :]
        distances[same] = np.inf
        nearest = distances.min(axis=1)
        return cls(embeddings, models, float(np.percentile(nearest, percentile)), percentile)

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """``[Q]``: each query's distance to its nearest reference checkpoint."""
        queries = np.asarray(queries, dtype=np.float64)
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise FormatError(f"queries must be [Q, {self.embeddings.shape[1]}], got "
                              f"{list(queries.shape)}")
        return _pairwise(queries, self.embeddings).min(axis=1)

    def flags(self, queries: np.ndarray) -> list[dict[str, float | bool]]:
        """Per query ``{"distance", "ood"}``: flagged when the distance exceeds the
        threshold."""
        return [{"distance": float(d), "ood": bool(d > self.threshold)}
                for d in self.distances(queries)]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        atomic.save_array(directory / "ood.npy", self.embeddings)
        atomic.write_json(directory / "ood.json", {
            "format": FORMAT, "version": VERSION, "threshold": self.threshold,
            "percentile": self.percentile, "models": self.models})

    @classmethod
    def load(cls, directory: str | Path) -> OODReference | None:
        """The reference saved in ``directory``, or None when there is none."""
        directory = Path(directory)
        if not (directory / "ood.json").is_file():
            return None
        meta = atomic.read_manifest(directory / "ood.json", FORMAT, VERSION)
        embeddings = np.load(directory / "ood.npy", allow_pickle=False)
        try:
            return cls(embeddings, list(meta["models"]), float(meta["threshold"]),
                       float(meta["percentile"]))
        except (KeyError, TypeError, ValueError) as error:
            raise FormatError(f"{directory / 'ood.json'}: malformed ({error!r})") from error


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[len(a), len(b)]``."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0))
