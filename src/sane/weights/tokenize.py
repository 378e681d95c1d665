"""A state dict as a sequence of tokens, and back, bit for bit.

Each learned tensor becomes one *layer* of tokens. The tensor is viewed as a matrix
``[rows, rest]`` (rows are output channels: ``shape[0]``; a 0-d tensor is one row, a 1-D tensor
``[C]`` is ``C`` rows of one value), its bias (if it has one) is appended as a last column, and
each row of ``row_length`` values is cut into ``ceil(row_length / d_t)`` consecutive tokens of
``d_t`` values, the last one zero padded. Layers follow the state dict's key order. Token ``n``
has the position ``(n, l, k)``: its index in the sequence, its layer and its row in the layer.

A weight and its bias pair up when they sit in the same module (same key prefix), the weight's
leaf name ends in ``weight``, the bias's leaf name is the same with ``weight`` replaced by
``bias`` (``weight``/``bias``, ``in_proj_weight``/``in_proj_bias``), and the bias is 1-D with
``shape[0]`` entries. Every other floating-point tensor is tokenized alone.

Batch-norm parameters and running statistics are not learned like the other weights (the
statistics are re-estimated after sampling), so by default they are kept out of the tokens, in
:attr:`Tokens.rest`. Batch-norm modules are recognised by module type when ``model`` is given
(instances of ``torch.nn.modules.batchnorm._BatchNorm``), otherwise by structure: a module whose
entries include both ``running_mean`` and ``running_var`` (the state that batch norm defines;
a module that merely has "bn" in its name is not one). ``num_batches_tracked`` never enters the
tokens; with ``include_batchnorm=True`` every batch-norm module adds up to three layers:
``[weight, bias]`` rows of two values, ``running_mean`` and ``running_var`` rows of one.

A :class:`TokenManifest` records keys, shapes, dtypes, token ranges and what was left out, so
:func:`detokenize` rebuilds the state dict without a reference model. It serializes to JSON.

Large models need not be held as tokens at all: :mod:`sane.weights.token_ranges` makes and
writes any range of the tokens, with the same bits as these whole-sequence functions.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sane.errors import ConfigError, FormatError
from sane.weights.manifest import (
    FLOAT_DTYPES,
    ExcludedTensor,
    TokenLayer,
    TokenManifest,
    dtype_name,
    rows_and_length,
)
from sane.weights.token_ranges import detokenize_pieces, fill_tokens

#: Values a freshly built batch-norm module holds, by entry name (used when ``rest`` is absent).
BATCHNORM_DEFAULTS = {
    "weight": 1.0,
    "bias": 0.0,
    "running_mean": 0.0,
    "running_var": 1.0,
    "num_batches_tracked": 0.0,
}


@dataclass(frozen=True)
class Tokens:
    """A tokenized state dict.

    ``tokens`` ``[N, d_t]`` (float32, or float64 if a tokenized tensor is), ``mask`` ``[N, d_t]``
    bool (True on real values), ``positions`` ``[N, 3]`` int64 ``(n, l, k)``, the
    ``manifest``, and ``rest``: copies of the entries not tokenized (batch norm unless included,
    ``num_batches_tracked``, non-floating and empty tensors), which :func:`detokenize` takes back.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    manifest: TokenManifest
    rest: dict[str, torch.Tensor]


def make_manifest(
    state_dict: Mapping[str, torch.Tensor],
    token_size: int | None = None,
    *,
    model: nn.Module | None = None,
    include_batchnorm: bool = False,
) -> TokenManifest:
    """Plan the tokenization of ``state_dict`` (see the module docstring) without copying data.

    ``token_size=None`` takes the longest row over all tokenized layers (bias-free ones too);
    a smaller explicit size splits longer rows. Every state dict of the same architecture shares
    the manifest, so a zoo plans once and calls :func:`tokenize_into` per checkpoint.
    """
    _check_mapping(state_dict)
    batchnorm = _batchnorm_prefixes(state_dict, model)
    excluded: list[ExcludedTensor] = []
    learned: list[str] = []
    for key, t in state_dict.items():
        prefix, leaf = _split(key)
        shape, dtype = tuple(t.shape), dtype_name(t.dtype)
        if prefix in batchnorm and (not include_batchnorm or leaf == "num_batches_tracked"):
            excluded.append(
                ExcludedTensor(key, shape, dtype, "batchnorm", BATCHNORM_DEFAULTS.get(leaf))
            )
        elif not t.is_floating_point():
            excluded.append(ExcludedTensor(key, shape, dtype, "not floating point", None))
        elif t.numel() == 0:
            excluded.append(ExcludedTensor(key, shape, dtype, "empty", None))
        else:
            learned.append(key)
    if not learned:
        raise FormatError("the state dict has no non-empty floating-point tensor to tokenize")

    bias_of = _pair_biases(state_dict, learned)
    paired = set(bias_of.values())
    units = [(key, bias_of.get(key)) for key in learned if key not in paired]
    row_lengths = [rows_and_length(state_dict[w].shape, b is not None)[1] for w, b in units]
    if token_size is None:
        token_size = max(row_lengths)
    elif isinstance(token_size, bool) or not isinstance(token_size, numbers.Integral):
        raise ConfigError(f"token_size must be a positive integer or None, got {token_size!r}")
    elif token_size < 1:
        raise ConfigError(f"token_size must be a positive integer or None, got {token_size}")
    token_size = int(token_size)

    layers, start = [], 0
    for (weight_key, bias_key), row_length in zip(units, row_lengths):
        weight = state_dict[weight_key]
        rows, _ = rows_and_length(weight.shape, bias_key is not None)
        layer = TokenLayer(
            weight_key=weight_key,
            bias_key=bias_key,
            weight_shape=tuple(weight.shape),
            weight_dtype=dtype_name(weight.dtype),
            bias_dtype=None if bias_key is None else dtype_name(state_dict[bias_key].dtype),
            rows=rows,
            row_length=row_length,
            tokens_per_row=math.ceil(row_length / token_size),
            start=start,
        )
        layers.append(layer)
        start = layer.stop
    return TokenManifest(
        token_size=token_size,
        num_tokens=start,
        keys=tuple(state_dict),
        layers=tuple(layers),
        excluded=tuple(excluded),
        include_batchnorm=include_batchnorm,
    )


def tokenize(
    state_dict: Mapping[str, torch.Tensor],
    token_size: int | None = None,
    *,
    model: nn.Module | None = None,
    include_batchnorm: bool = False,
) -> Tokens:
    """Tokenize one state dict (tokens on the CPU); :func:`detokenize` inverts it exactly."""
    manifest = make_manifest(
        state_dict, token_size, model=model, include_batchnorm=include_batchnorm
    )
    tokens = torch.empty(manifest.num_tokens, manifest.token_size, dtype=manifest.dtype)
    tokenize_into(state_dict, manifest, tokens)
    rest = {e.key: state_dict[e.key].detach().to("cpu", copy=True) for e in manifest.excluded}
    return Tokens(tokens, manifest.mask(), manifest.positions(), manifest, rest)


@torch.no_grad()
def tokenize_into(
    state_dict: Mapping[str, torch.Tensor],
    manifest: TokenManifest,
    out: torch.Tensor | np.ndarray,
) -> torch.Tensor | np.ndarray:
    """Write the tokens of ``state_dict`` into ``out`` ``[N, d_t]`` and return ``out``.

    ``state_dict`` must match ``manifest`` (same tokenized keys, shapes and dtypes; checked).
    ``out`` is a contiguous floating tensor or numpy array, e.g. ``store[m]`` of an
    ``[M, N, d_t]`` memory map; padding is overwritten with zeros. A dtype narrower than the
    tensors' (say float16 for float32 weights) rounds, and then the round trip is not exact.
    """
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise FormatError("out is a read-only array; open the token store for writing")
    target = torch.from_numpy(out) if isinstance(out, np.ndarray) else out
    expected = (manifest.num_tokens, manifest.token_size)
    if not isinstance(target, torch.Tensor) or tuple(target.shape) != expected:
        raise FormatError(
            f"out must be a tensor or array of shape {list(expected)}, got "
            f"{list(getattr(target, 'shape', []))} ({type(out).__name__})"
        )
    if not target.is_floating_point() or not target.is_contiguous():
        raise FormatError(f"out must be contiguous and floating point, got {target.dtype}")
    manifest.check_state_dict(state_dict, finite=False)
    for layer in manifest.layers:
        fill_tokens(layer, state_dict, target[layer.start : layer.stop], layer.start)
    # One finiteness check over the written tokens is much cheaper than one per tensor; only
    # on failure is the culprit looked up.
    if not torch.isfinite(target).all():
        manifest.check_state_dict(state_dict)
        raise FormatError(f"the weights overflow the {target.dtype} of out")
    return out


@torch.no_grad()
def detokenize(
    tokens: torch.Tensor | np.ndarray,
    manifest: TokenManifest,
    rest: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Rebuild the state dict from ``tokens`` ``[num_tokens, token_size]``; padding is ignored.

    Tensors come back in the original key order and dtypes (rounded to them if ``tokens`` are
    wider), on ``tokens``' device, independent of ``tokens``. Entries kept out of the tokens are
    taken from ``rest`` (e.g. :attr:`Tokens.rest`); without them batch-norm entries get a fresh
    module's values (weight 1, bias 0, running_mean 0, running_var 1, num_batches_tracked 0) and
    anything else raises :class:`FormatError`. With ``rest``, the round trip is bit-exact.
    """
    if isinstance(tokens, np.ndarray):
        with warnings.catch_warnings():
            # A read-only memory map is fine here: tokens are only read.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            tokens = torch.from_numpy(tokens)
    expected = (manifest.num_tokens, manifest.token_size)
    if not isinstance(tokens, torch.Tensor) or tuple(tokens.shape) != expected:
        raise FormatError(
            f"tokens must have shape {list(expected)} (num_tokens, token_size) for this manifest, "
            f"got {list(getattr(tokens, 'shape', []))} ({type(tokens).__name__})"
        )
    return detokenize_pieces([(0, tokens)], manifest, rest)


def _check_mapping(state_dict: Any) -> None:
    if not isinstance(state_dict, Mapping):
        raise FormatError(f"expected a state dict (a mapping), got {type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise FormatError(f"state-dict keys must be strings, got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise FormatError(f"state dict entry {key!r} must be a tensor, got "
                              f"{type(value).__name__}")
        if value.is_floating_point() and dtype_name(value.dtype) not in FLOAT_DTYPES:
            raise FormatError(
                f"state dict entry {key!r} has dtype {value.dtype}; supported floating dtypes "
                f"are {sorted(FLOAT_DTYPES)}"
            )


def _batchnorm_prefixes(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module | None
) -> set[str]:
    """Key prefixes of batch-norm modules: by type with ``model``, else by their state."""
    if model is not None:
        expected = set(model.state_dict())
        if expected != set(state_dict):
            missing, extra = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
            raise FormatError(
                f"the state dict does not belong to the model: missing {missing[:5]}, "
                f"unexpected {extra[:5]}"
            )
        return {
            name
            for name, module in model.named_modules(remove_duplicate=False)
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        }
    leaves: dict[str, set[str]] = {}
    for key in state_dict:
        prefix, leaf = _split(key)
        leaves.setdefault(prefix, set()).add(leaf)
    return {p for p, names in leaves.items() if {"running_mean", "running_var"} <= names}


def _pair_biases(state_dict: Mapping[str, torch.Tensor], learned: list[str]) -> dict[str, str]:
    """Map each weight key to the key of its bias (see the module docstring for the rule)."""
    candidates = set(learned)
    bias_of = {}
    for key in learned:
        prefix, leaf = _split(key)
        weight = state_dict[key]
        if not leaf.endswith("weight") or weight.dim() == 0:
            continue
        bias_leaf = leaf[: -len("weight")] + "bias"
        bias_key = f"{prefix}.{bias_leaf}" if prefix else bias_leaf
        if bias_key in candidates and tuple(state_dict[bias_key].shape) == (weight.shape[0],):
            bias_of[key] = bias_key
    return bias_of


def _split(key: str) -> tuple[str, str]:
    """``"a.b.weight"`` -> ``("a.b", "weight")``; a root entry has the prefix ``""``."""
    prefix, _, leaf = key.rpartition(".")
    return prefix, leaf
