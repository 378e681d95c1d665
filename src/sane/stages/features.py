"""Features of every checkpoint of a token store, for probes and the OOD reference: SANE
embeddings through the one engine (:meth:`sane.pipeline.Pipeline.embed`, checkpoints already
aligned) and the ``W`` / ``s(W)`` baselines (:mod:`sane.downstream.features`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from sane.downstream.features import (
    PERMUTATIONS,
    FeatureSet,
    baseline_features,
    check_baseline,
    sane_features,
)
from sane.errors import ConfigError
from sane.pipeline import Pipeline
from sane.weights.store import TokenStore


def store_embeddings(pipe: Pipeline, store: TokenStore, *, rows: np.ndarray | None = None,
                     spread: bool = False, permutations: int = PERMUTATIONS,
                     batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """``[R, d_z]`` (``[R, 2·d_z]`` with ``spread``) float64: :meth:`Pipeline.embed` of the
    checkpoints ``rows`` of ``store`` (default: all), rebuilt from their tokens in the aligned
    frame, ``batch_size`` at a time."""
    rows = np.arange(len(store.rows)) if rows is None else np.asarray(rows)
    parts = []
    for start in tqdm(range(0, len(rows), batch_size), desc="embedding", unit="batch",
                      disable=not progress):
        states = [store.state_dict(int(r)) for r in rows[start : start + batch_size]]
        parts.append(pipe.embed(states, spread=spread, permutations=permutations,
                                aligned=True, batch_size=batch_size))
    width = pipe.model.config.d_latent * (2 if spread else 1)
    return np.concatenate(parts) if parts else np.empty((0, width))


def store_features(store: TokenStore, names: Sequence[FeatureSet | str],
                   pipe: Pipeline | None = None, *, progress: bool = True,
                   permutations: int = PERMUTATIONS) -> dict[FeatureSet, np.ndarray]:
    """``{name: [M, F]}`` for each name: ``"SANE"`` (the embedding; needs ``pipe``),
    ``"SANE+std"`` (the embedding and the spread of the token latents), each averaged over
    ``permutations`` random permutations, or a baseline."""
    names = FeatureSet.parse_all(names)
    for name in names:  # refuse what cannot be computed before any work
        if name.from_sane and pipe is None:
            raise ConfigError(f"the {name} features need a pretrained model")
        if not name.from_sane:
            check_baseline(store, name)
    features = {}
    if any(name.from_sane for name in names):  # one pass for both
        both = store_embeddings(pipe, store, spread=True, permutations=permutations,
                                progress=progress)
        features = sane_features(both, pipe.model.config.d_latent)
    states = None  # rebuilt once, for all the baselines
    for name in names:
        if not name.from_sane:
            states = states or [store.state_dict(r) for r in range(len(store.rows))]
            features[name] = baseline_features(store, name, states)
    return {name: features[name] for name in names}
