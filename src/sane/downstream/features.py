"""Features of every checkpoint of a token store: SANE embeddings and the ``W`` / ``s(W)``
baselines.

The baselines read the store's checkpoints rebuilt from their tokens (de-standardized, in the
aligned frame when the store is aligned), so all feature sets see the same models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sane.errors import ConfigError
from sane.model import SANE
from sane.weights.baselines import BASELINES
from sane.weights.store import TokenStore

# W holds every weight of every checkpoint in float64: refuse what would not fit comfortably.
MAX_BASELINE_BYTES = 4 * 2**30


def sane_embeddings(
    model: SANE, store: TokenStore, *, rows: np.ndarray | None = None, batch_size: int = 32,
    progress: bool = True, window: int | None = None, halo: int | None = None,
) -> np.ndarray:
    """``[R, d_z]`` float64: the haloed mean latent of the checkpoints ``rows`` of
    ``store`` (default: every checkpoint)."""
    rows = np.arange(len(store.rows)) if rows is None else np.asarray(rows)
    device = next(model.parameters()).device
    positions = store.positions.to(device)
    out = np.empty((len(rows), model.config.d_latent))
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(rows), batch_size), desc="embedding",
                          unit="batch", disable=not progress):
            part = rows[start : start + batch_size]
            tokens = torch.tensor(store.tokens[part], device=device)
            z = model.embed(tokens, positions, window=window, halo=halo)
            out[start : start + len(part)] = z.double().cpu().numpy()
    return out


def baseline_features(store: TokenStore, name: str,
                      states: Sequence[dict[str, torch.Tensor]] | None = None) -> np.ndarray:
    """``[M, F]``: the baseline ``name`` (a key of :data:`sane.weights.BASELINES`) of every
    checkpoint of ``store``; ``states`` are those checkpoints when already rebuilt."""
    _check_baseline(store, name)
    if states is None:
        states = _checkpoints(store)
    return BASELINES[name](states, include_batchnorm=store.settings.include_batchnorm)


def store_features(
    store: TokenStore, names: Sequence[str], model: SANE | None = None, *,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """``{name: [M, F]}`` for each name: ``"SANE"`` (needs ``model``) or a baseline."""
    for name in names:  # refuse what cannot be computed before any work
        if name == "SANE" and model is None:
            raise ConfigError("the SANE features need a pretrained model")
        if name != "SANE":
            _check_baseline(store, name)
    features = {}
    states = None  # rebuilt once, for all the baselines
    for name in names:
        if name == "SANE":
            features[name] = sane_embeddings(model, store, progress=progress)
        else:
            states = states or _checkpoints(store)
            features[name] = baseline_features(store, name, states)
    return features


def _check_baseline(store: TokenStore, name: str) -> None:
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    size = len(store.rows) * int(store.mask.sum()) * 8
    if name == "W" and size > MAX_BASELINE_BYTES:
        raise ConfigError(f"the W baseline of {store.path} would need {size / 2**30:.1f} GiB; "
                          "leave it out of the feature sets")


def _checkpoints(store: TokenStore) -> list[dict[str, torch.Tensor]]:
    return [store.state_dict(row) for row in range(len(store.rows))]
