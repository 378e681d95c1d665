"""Features of every checkpoint of a token store: SANE embeddings and the ``W`` / ``s(W)``
baselines; and the NFN probe's predictions, a network trained on the store's checkpoints.

The baselines and the NFN probe read the store's checkpoints rebuilt from their tokens
(de-standardized, in the aligned frame when the store is aligned), so all of them see the
same models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sane.downstream.nfn_probe import NFNConfig, NFNProbe
from sane.downstream.probes import Predicted
from sane.errors import ConfigError
from sane.model import SANE
from sane.weights.augment import WindowPermuter, gather_window
from sane.weights.baselines import BASELINES, sw_layer
from sane.weights.permutations import embedding_views
from sane.weights.store import TokenStore

# The feature sets a pretrained SANE computes (the others are weight baselines).
SANE_FEATURES = ("SANE", "SANE+std")
# How many random permutations of a model its SANE embedding is averaged over, besides the
# model as aligned: SANE is only approximately invariant to permutations, and the average
# predicts properties better (README, "SANE against s(W)").
PERMUTATIONS = 16
# W holds every weight of every checkpoint in float64: refuse what would not fit comfortably.
MAX_BASELINE_BYTES = 4 * 2**30


def sane_embeddings(
    model: SANE, store: TokenStore, *, rows: np.ndarray | None = None, batch_size: int = 32,
    progress: bool = True, window: int | None = None, halo: int | None = None,
    spread: bool = False, permutations: int = PERMUTATIONS, seed: int = 0,
) -> np.ndarray:
    """``[R, d_z]`` float64: the haloed mean latent of the checkpoints ``rows`` of
    ``store`` (default: every checkpoint), averaged over the checkpoint as stored (aligned)
    and ``permutations`` random permutations of it (:func:`embedding_views` of ``seed``: the
    same for every checkpoint; none when the store's architecture has no permutation spec);
    with ``spread``, ``[R, 2·d_z]``: the mean and then the standard deviation of the token
    latents (:func:`spread_features`), each averaged over the views."""
    rows = np.arange(len(store.rows)) if rows is None else np.asarray(rows)
    device = next(model.parameters()).device
    positions = store.positions.to(device)
    views = embedding_views(store.spec, permutations, seed)
    permuter = None if len(views) == 1 else WindowPermuter(store.manifest, store.spec)
    n = store.manifest.num_tokens
    out = np.zeros((len(rows), model.config.d_latent * (2 if spread else 1)))
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), batch_size), desc="embedding",
                          unit="batch", disable=not progress):
            part = rows[start : start + batch_size]
            stored = torch.tensor(store.tokens[part])
            for perm in views:
                tokens = stored
                if perm is not None:
                    source = permuter.source(perm, 0, n)  # [N, d_t] indices into flat tokens
                    tokens = torch.stack([gather_window(flat, source)
                                          for flat in stored.reshape(len(part), -1).numpy()])
                z = model.encode_sequence(tokens.to(device), positions, window=window,
                                          halo=halo)
                z = spread_features(z) if spread else z.mean(dim=1)
                out[start : start + len(part)] += z.double().cpu().numpy()
    return out / len(views)


def spread_features(latents: torch.Tensor) -> torch.Tensor:
    """``latents [B, N, d_z]`` -> ``[B, 2·d_z]``: the mean over tokens (the SANE embedding)
    and the standard deviation over tokens (population) of every latent dimension; the
    ``SANE+std`` feature set."""
    return torch.cat([latents.mean(dim=1), latents.std(dim=1, correction=0)], dim=1)


def baseline_features(store: TokenStore, name: str,
                      states: Sequence[dict[str, torch.Tensor]] | None = None) -> np.ndarray:
    """``[M, F]``: the baseline ``name`` (a key of :data:`sane.weights.BASELINES`) of every
    checkpoint of ``store``; ``states`` are those checkpoints when already rebuilt."""
    _check_baseline(store, name)
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


def store_features(
    store: TokenStore, names: Sequence[str], model: SANE | None = None, *,
    progress: bool = True, permutations: int = PERMUTATIONS,
) -> dict[str, np.ndarray]:
    """``{name: [M, F]}`` for each name: ``"SANE"`` (the embedding; needs ``model``),
    ``"SANE+std"`` (the embedding and the spread of the token latents), each averaged over
    ``permutations`` random permutations (:func:`sane_embeddings`), or a baseline."""
    for name in names:  # refuse what cannot be computed before any work
        if name in SANE_FEATURES and model is None:
            raise ConfigError(f"the {name} features need a pretrained model")
        if name not in SANE_FEATURES:
            _check_baseline(store, name)
    features = {}
    if any(name in SANE_FEATURES for name in names):  # one pass for both
        both = sane_embeddings(model, store, progress=progress, spread=True,
                               permutations=permutations)
        d = model.config.d_latent
        features = {"SANE": both[:, :d], "SANE+std": both}
        features = {name: features[name] for name in names if name in SANE_FEATURES}
    states = None  # rebuilt once, for all the baselines
    for name in names:
        if name not in SANE_FEATURES:
            states = states or _checkpoints(store)
            features[name] = baseline_features(store, name, states)
    return {name: features[name] for name in names}


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


def _check_baseline(store: TokenStore, name: str) -> None:
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    size = len(store.rows) * int(store.mask.sum()) * 8
    if name == "W" and size > MAX_BASELINE_BYTES:
        raise ConfigError(f"the W baseline of {store.path} would need {size / 2**30:.1f} GiB; "
                          "leave it out of the feature sets")


def _checkpoints(store: TokenStore) -> list[dict[str, torch.Tensor]]:
    return [store.state_dict(row) for row in range(len(store.rows))]
