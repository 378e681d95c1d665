"""Feature sets of model checkpoints: their names (:class:`FeatureSet`), the weight baselines
``W`` / ``s(W)`` of a token store's checkpoints, the ``SANE+std`` statistics of token latents,
and the NFN probe's predictions (a network trained on the store's checkpoints). SANE
embeddings themselves come from the one engine (:meth:`sane.pipeline.Pipeline.embed`; a
store's checkpoints: :func:`sane.stages.features.store_features`).

The baselines and the NFN probe read the store's checkpoints rebuilt from their tokens
(de-standardized, in the aligned frame when the store is aligned), so all of them see the
same models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

import numpy as np
import torch

from sane.downstream.nfn_probe import NFNConfig, NFNProbe
from sane.downstream.probes import Predicted
from sane.errors import ConfigError
from sane.weights.baselines import BASELINES, sw_layer
from sane.weights.store import TokenStore


class FeatureSet(StrEnum):
    """The name of a feature set, as commands take it and results record it (``probes.json``,
    ``ood.json``, ``ood-<name>.npy`` hold these strings). A member is its string: it keys
    dictionaries and compares equal as one."""

    SANE = "SANE"  # the mean token latent of a pretrained SANE
    SANE_STD = "SANE+std"  # the mean and the spread of the token latents
    W = "W"  # every weight (sane.weights.baselines)
    SW_TENSOR_VAR = "sW-tensor-var"
    SW_TENSOR_STD = "sW-tensor-std"
    SW_LAYER = "sW-layer"
    NFN = "NFN"  # the NFN probe's predictions (sane.downstream.nfn_probe)

    @classmethod
    def parse(cls, name: str) -> FeatureSet:
        """The feature set called ``name``; :class:`ConfigError` listing the known ones if
        there is none."""
        try:
            return cls(name)
        except ValueError:
            raise ConfigError(f"unknown feature set {str(name)!r}; known: "
                              f"{', '.join(cls)}") from None

    @classmethod
    def parse_all(cls, names: Iterable[str]) -> tuple[FeatureSet, ...]:
        """:meth:`parse` of every name, in order."""
        return tuple(cls.parse(name) for name in names)

    @property
    def from_sane(self) -> bool:
        """Computed by a pretrained SANE (the others need only the checkpoints)."""
        return self in (FeatureSet.SANE, FeatureSet.SANE_STD)

    @property
    def is_baseline(self) -> bool:
        """A weight baseline of :data:`sane.weights.BASELINES`."""
        return self in BASELINES


# How many random permutations of a model its SANE embedding is averaged over, besides the
# model as aligned: SANE is only approximately invariant to permutations, and the average
# predicts properties better (docs/results.md, "SANE against s(W)"); with fewer, the
# validation R² of some zoo falls (docs/results.md, "Embedding views";
# benchmarks/bench_embedding_views.py).
PERMUTATIONS = 16
# W holds every weight of every checkpoint in float64: refuse what would not fit comfortably.
MAX_BASELINE_BYTES = 4 * 2**30


def spread_features(latents: torch.Tensor) -> torch.Tensor:
    """``latents [B, N, d_z]`` -> ``[B, 2·d_z]``: the mean over tokens (the SANE embedding)
    and the standard deviation over tokens (population) of every latent dimension; the
    ``SANE+std`` feature set."""
    return torch.cat([latents.mean(dim=1), latents.std(dim=1, correction=0)], dim=1)


def sane_features(both: np.ndarray, d_latent: int) -> dict[FeatureSet, np.ndarray]:
    """``SANE`` ``[M, d_latent]`` and ``SANE+std`` ``[M, 2·d_latent]`` of embeddings with
    their spread (``both``, :func:`spread_features`)."""
    return {FeatureSet.SANE: both[:, :d_latent], FeatureSet.SANE_STD: both}


def baseline_features(store: TokenStore, name: FeatureSet | str,
                      states: Sequence[dict[str, torch.Tensor]] | None = None) -> np.ndarray:
    """``[M, F]``: the baseline ``name`` (a key of :data:`sane.weights.BASELINES`) of every
    checkpoint of ``store``; ``states`` are those checkpoints when already rebuilt."""
    check_baseline(store, name)
    if states is None:
        states = _checkpoints(store)
    return BASELINES[name](states, include_batchnorm=store.settings.include_batchnorm)


def sw_layer_rows(store: TokenStore, rows: np.ndarray, chunk: int = 64) -> np.ndarray:
    """``[len(rows), 7·L]``: the ``sW-layer`` baseline of the checkpoints ``rows`` of ``store``,
    rebuilt ``chunk`` at a time (never every checkpoint's weights at once)."""
    rows = np.asarray(rows)
    return np.concatenate([
        sw_layer([store.state_dict(int(r)) for r in rows[start : start + chunk]],
                 include_batchnorm=store.settings.include_batchnorm)
        for start in range(0, len(rows), chunk)])


def nfn_predictions(
    store: TokenStore, targets: Mapping[str, np.ndarray], config: NFNConfig | None = None, *,
    others: Sequence[Mapping[str, torch.Tensor]] | None = None, progress: bool = True,
) -> tuple[dict[str, Predicted], NFNProbe]:
    """The NFN probe (:mod:`sane.downstream.nfn_probe`) fitted on the store's training
    checkpoints to ``targets`` (``{property: [M]}``), sized and stopped on its validation
    checkpoints, and the fitted probe. Per property: its predictions for every checkpoint and,
    with ``others`` (more checkpoints of the store's architecture), theirs."""
    if store.spec is None:
        raise ConfigError(f"{store.path}: the NFN probe permutes hidden neurons, and the "
                          "store's architecture has no permutation spec")
    states = _checkpoints(store)
    names = list(targets)
    y = np.column_stack([targets[name] for name in names])
    train, val = store.split_rows("train"), store.split_rows("val")
    probe = NFNProbe(store.spec, config).fit(
        [states[r] for r in train], y[train],
        validation=([states[r] for r in val], y[val]), progress=progress)
    values = probe.predict(states)
    extra = None if others is None else probe.predict(others)
    return {name: Predicted(values[:, p], probe.selected_[p],
                            None if extra is None else extra[:, p])
            for p, name in enumerate(names)}, probe


def check_baseline(store: TokenStore, name: FeatureSet | str) -> None:
    """:class:`ConfigError` unless ``name`` is a weight baseline the store's checkpoints fit
    in memory for."""
    if not FeatureSet.parse(name).is_baseline:
        raise ConfigError(f"{name} is no weight baseline; the baselines: {', '.join(BASELINES)}")
    size = len(store.rows) * int(store.mask.sum()) * 8
    if name == "W" and size > MAX_BASELINE_BYTES:
        raise ConfigError(f"the W baseline of {store.path} would need {size / 2**30:.1f} GiB; "
                          "leave it out of the feature sets")


def _checkpoints(store: TokenStore) -> list[dict[str, torch.Tensor]]:
    return [store.state_dict(row) for row in range(len(store.rows))]
