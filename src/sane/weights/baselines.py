"""Weight-space baselines: the raw weights ``W`` and weight statistics ``s(W)``.

Each variant is one function from ``M`` state dicts of one architecture to a float64 feature
matrix ``[M, F]``, named in :data:`BASELINES`. They read the tensors the tokenizer would
tokenize (batch norm left out unless ``include_batchnorm``), in token order, and only real
values: padding never enters.

- ``W``: every tokenized value, flattened in token order without padding.
- ``sW-tensor-var``: per tensor, weights and biases separately: mean, variance and the
  quantiles 0/25/50/75/100 (Unterthiner et al., 2020; the NFN benchmarks).
- ``sW-tensor-std``: the same with the standard deviation in place of the variance.
- ``sW-layer``: per layer, weight and bias together: mean, variance and the percentiles
  1/25/50/75/99 (Model Zoos and SANE's ``s(W)``; SANE computed them on padded tokens, we don't).

Variances are population variances (``ddof=0``); quantiles interpolate linearly (numpy's
default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sane.errors import FormatError
from sane.weights.manifest import TokenLayer, TokenManifest
from sane.weights.tokenize import make_manifest

StateDicts = Sequence[Mapping[str, torch.Tensor]]

TENSOR_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
LAYER_QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)


def w_features(
    state_dicts: StateDicts, *, model: nn.Module | None = None, include_batchnorm: bool = False
) -> np.ndarray:
    """``W``: ``[M, P]``, every tokenized weight and bias in token order (row by row, each
    row's weights then its bias), no padding; ``P`` is the number of tokenized values."""
    manifest = _manifest(state_dicts, model, include_batchnorm)
    return np.concatenate([_layer_values(state_dicts, ly) for ly in manifest.layers], axis=1)


def sw_tensor_var(
    state_dicts: StateDicts, *, model: nn.Module | None = None, include_batchnorm: bool = False
) -> np.ndarray:
    """``s(W)`` per tensor: ``[M, 7·T]``, for each of the ``T`` tokenized tensors (a weight,
    then its bias) mean, variance and quantiles 0/25/50/75/100."""
    return _per_tensor(state_dicts, model, include_batchnorm, np.var)


def sw_tensor_std(
    state_dicts: StateDicts, *, model: nn.Module | None = None, include_batchnorm: bool = False
) -> np.ndarray:
    """``s(W)`` per tensor with the standard deviation: ``[M, 7·T]``, for each tokenized
    tensor mean, standard deviation and quantiles 0/25/50/75/100."""
    return _per_tensor(state_dicts, model, include_batchnorm, np.std)


def sw_layer(
    state_dicts: StateDicts, *, model: nn.Module | None = None, include_batchnorm: bool = False
) -> np.ndarray:
    """``s(W)`` per layer: ``[M, 7·L]``, for each of the ``L`` token layers (weight and bias
    together; a batch norm gives three: [γ, β], running mean, running variance) mean,
    variance and percentiles 1/25/50/75/99."""
    manifest = _manifest(state_dicts, model, include_batchnorm)
    features = [
        _statistics(_layer_values(state_dicts, ly), np.var, LAYER_QUANTILES)
        for ly in manifest.layers
    ]
    return np.concatenate(features, axis=1)


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "W": w_features,
    "sW-tensor-var": sw_tensor_var,
    "sW-tensor-std": sw_tensor_std,
    "sW-layer": sw_layer,
}


def _per_tensor(
    state_dicts: StateDicts,
    model: nn.Module | None,
    include_batchnorm: bool,
    spread: Callable[..., np.ndarray],
) -> np.ndarray:
    manifest = _manifest(state_dicts, model, include_batchnorm)
    features = [
        _statistics(_stack(state_dicts, key), spread, TENSOR_QUANTILES)
        for key in manifest.tokenized_keys()
    ]
    return np.concatenate(features, axis=1)


def _statistics(
    values: np.ndarray, spread: Callable[..., np.ndarray], quantiles: tuple[float, ...]
) -> np.ndarray:
    """``[M, 2 + Q]``: mean, spread and quantiles of each row of ``values`` ``[M, P]``."""
    q = np.quantile(values, quantiles, axis=1)  # [Q, M]
    return np.column_stack([values.mean(axis=1), spread(values, axis=1), *q])


def _manifest(
    state_dicts: StateDicts, model: nn.Module | None, include_batchnorm: bool
) -> TokenManifest:
    """Plan the tensors from the first state dict and check that all match it (finiteness is
    checked later, on the stacked values)."""
    if len(state_dicts) == 0:
        raise FormatError("baselines need at least one state dict")
    manifest = make_manifest(state_dicts[0], model=model, include_batchnorm=include_batchnorm)
    for index, state_dict in enumerate(state_dicts):
        try:
            manifest.check_state_dict(state_dict, finite=False)
        except FormatError as e:
            raise FormatError(f"state dict {index}: {e}") from e
    return manifest


def _stack(state_dicts: StateDicts, key: str) -> np.ndarray:
    """``[M, numel]`` float64: the entry ``key`` of every state dict, flattened."""
    stacked = torch.stack([sd[key].detach().reshape(-1) for sd in state_dicts])
    values = stacked.to("cpu", torch.float64).numpy()
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        raise FormatError(f"state dict {index}: entry {key!r} holds non-finite values")
    return values


def _layer_values(state_dicts: StateDicts, layer: TokenLayer) -> np.ndarray:
    """``[M, rows·row_length]`` float64: the layer's rows (weights, then bias) concatenated."""
    m = len(state_dicts)
    rows = [_stack(state_dicts, layer.weight_key).reshape(m, layer.rows, -1)]
    if layer.bias_key is not None:
        rows.append(_stack(state_dicts, layer.bias_key).reshape(m, layer.rows, 1))
    return np.concatenate(rows, axis=2).reshape(m, -1)
