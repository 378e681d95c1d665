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

Large models need not be held as tokens at all: :func:`token_reader` makes any range of a
state dict's tokens on demand, and :func:`detokenize_pieces` writes tokens into a state dict
range by range as they arrive (a range may cut rows anywhere), with the same bits as the
whole-sequence functions.
"""

from __future__ import annotations

import bisect
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    torch_dtype,
)

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
        _fill(layer, state_dict, target[layer.start : layer.stop], layer.start)
    # One finiteness check over the written tokens is much cheaper than one per tensor; only
    # on failure is the culprit looked up.
    if not torch.isfinite(target).all():
        manifest.check_state_dict(state_dict)
        raise FormatError(f"the weights overflow the {target.dtype} of out")
    return out


def token_reader(
    state_dict: Mapping[str, torch.Tensor],
    manifest: TokenManifest,
    *,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> Callable[[int, int], torch.Tensor]:
    """``read(start, stop)``: the tokens ``[stop - start, d_t]`` of ``state_dict``, equal to
    ``tokenize(state_dict, ...).tokens[start:stop]``, made when asked, so that a model is
    encoded without a tokenized copy of it (e.g. as :class:`~sane.model.halo.Sequences`).

    ``transform(key, values)``, when given, maps the values read from entry ``key`` (any part
    of it, element-wise: e.g. :meth:`Standardization.standardize
    <sane.weights.standardize.Standardization.standardize>`) before they are written; ``dtype``
    is the tokens' (default the manifest's). ``state_dict`` is checked against ``manifest``
    once, here (shapes, dtypes, finite values), and read, not copied: later changes to it show.
    """
    manifest.check_state_dict(state_dict)
    dtype = manifest.dtype if dtype is None else dtype

    @torch.no_grad()
    def read(start: int, stop: int) -> torch.Tensor:
        _check_range(start, stop, manifest)
        out = torch.empty(stop - start, manifest.token_size, dtype=dtype)
        for layer, low, high in _overlaps(manifest, start, stop):
            _fill(layer, state_dict, out[low - start : high - start], low, transform)
        return out

    return read


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


@torch.no_grad()
def detokenize_pieces(
    pieces: Iterable[tuple[int, torch.Tensor]],
    manifest: TokenManifest,
    rest: Mapping[str, torch.Tensor] | None = None,
    *,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    out: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`detokenize` of tokens that arrive in pieces ``(start, tokens [length, d_t])``
    (tokens ``[start, start + length)``, e.g. from :meth:`sane.model.SANE.decode_pieces`),
    each written into the state dict as it comes, so that the whole sequence is never held.

    The pieces must cover ``[0, num_tokens)`` exactly once, in any order; the state dict is
    made on the first piece's device, and is the same as :func:`detokenize` of the
    concatenated pieces. ``transform(key, values)``, when given, maps the values of entry
    ``key`` (any part of it, element-wise: e.g. :meth:`Standardization.destandardize
    <sane.weights.standardize.Standardization.destandardize>`) before they are written.
    ``out``, when given, holds the tensors to write into (every entry of the manifest, of its
    shape and dtype; e.g. a module's own ``state_dict()``), which are returned.
    """
    built = None if out is None else _targets(out, manifest)
    covered = []
    for start, piece in pieces:
        _check_piece(start, piece, manifest)
        if built is None:
            built = _empty_state(manifest, piece.device)
        for layer, low, high in _overlaps(manifest, start, start + len(piece)):
            _write(layer, piece[low - start : high - start], low, built, transform)
        covered.append((start, start + len(piece)))
    _check_cover(covered, manifest.num_tokens)
    for key, value in _restore_excluded(manifest, rest or {}).items():
        if out is None:
            built[key] = value
        else:
            built[key].copy_(value)
    return {key: built[key] for key in manifest.keys}


def _targets(out: Mapping[str, torch.Tensor], manifest: TokenManifest
             ) -> dict[str, torch.Tensor]:
    """``out``'s tensors for every entry of ``manifest``, checked (FormatError otherwise)."""
    expected = _empty_state(manifest, torch.device("meta"))
    expected |= {e.key: torch.empty(e.shape, dtype=torch_dtype(e.dtype), device="meta")
                 for e in manifest.excluded}
    targets = {}
    for key, like in expected.items():
        t = out.get(key)
        if not isinstance(t, torch.Tensor) or t.shape != like.shape or t.dtype != like.dtype:
            got = "missing" if t is None else f"{list(getattr(t, 'shape', []))} {t.dtype}"
            raise FormatError(f"out[{key!r}] must be a tensor {list(like.shape)} {like.dtype}, "
                              f"got {got}")
        targets[key] = t
    return targets


# -- token ranges ---------------------------------------------------------------------------
# A layer's tokens are its row matrix [rows, tokens_per_row · d_t] in row-major order, so a
# token range of a layer is a range of that matrix's values: some whole rows, with at most a
# part of a row on either side.

#: Tokens checked for finiteness at a time (bounds the boolean temporary).
_CHECK_TOKENS = 4096


def _overlaps(
    manifest: TokenManifest, start: int, stop: int
) -> Iterator[tuple[TokenLayer, int, int]]:
    """The layers holding tokens of ``[start, stop)``, each with its part ``[low, high)``."""
    index = bisect.bisect_right(manifest.layers, start, key=lambda layer: layer.start) - 1
    for layer in manifest.layers[max(index, 0) :]:
        if layer.start >= stop:
            return
        low, high = max(start, layer.start), min(stop, layer.stop)
        if low < high:
            yield layer, low, high


def _segments(layer: TokenLayer, low: int, high: int, token_size: int
              ) -> Iterator[tuple[int, int, int, int, int]]:
    """Tokens ``[low, high)`` of ``layer`` as ``(offset, row, rows, first, stop)``: values
    ``[offset, offset + rows · (stop - first))`` of the range, row-major, are columns
    ``[first, stop)`` of the rows ``[row, row + rows)`` of the layer's row matrix."""
    width = layer.tokens_per_row * token_size
    begin, end = (low - layer.start) * token_size, (high - layer.start) * token_size
    position = begin
    while position < end:
        row, first = divmod(position, width)
        if first == 0 and end - position >= width:
            rows, stop = (end - position) // width, width
        else:
            rows, stop = 1, min(width, first + end - position)
        yield position - begin, row, rows, first, stop
        position += rows * (stop - first)


def _fill(
    layer: TokenLayer, state_dict: Mapping[str, torch.Tensor], out: torch.Tensor, low: int,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Write the tokens ``[low, low + len(out))`` of ``layer`` (within it) into ``out``, the
    values of each entry mapped by ``transform(key, values)`` when given."""
    def values(key: str, part: torch.Tensor) -> torch.Tensor:
        return part if transform is None else transform(key, part)

    flat = out.view(-1)
    w = layer.weight_columns
    weight = state_dict[layer.weight_key].detach().reshape(layer.rows, w)
    bias = None if layer.bias_key is None else state_dict[layer.bias_key].detach()
    for offset, row, rows, first, stop in _segments(layer, low, low + len(out), out.shape[1]):
        block = flat[offset : offset + rows * (stop - first)].view(rows, stop - first)
        rows_ = slice(row, row + rows)
        if first < w:
            block[:, : min(stop, w) - first] = values(layer.weight_key,
                                                      weight[rows_, first : min(stop, w)])
        if bias is not None and first <= w < stop:
            block[:, w - first] = values(layer.bias_key, bias[rows_])
        block[:, max(layer.row_length, first) - first :] = 0


def _write(layer: TokenLayer, tokens: torch.Tensor, low: int, built: dict[str, torch.Tensor],
           transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> None:
    """Write ``tokens``, the tokens ``[low, low + len(tokens))`` of ``layer``, into
    ``built``'s tensors (padding is skipped), the values of each entry mapped by
    ``transform(key, values)`` when given."""
    def values(key: str, part: torch.Tensor) -> torch.Tensor:
        return part if transform is None else transform(key, part)

    flat = tokens.reshape(-1)
    w = layer.weight_columns
    weight = built[layer.weight_key].view(layer.rows, w)
    bias = None if layer.bias_key is None else built[layer.bias_key]
    for offset, row, rows, first, stop in _segments(layer, low, low + len(tokens),
                                                     tokens.shape[1]):
        block = flat[offset : offset + rows * (stop - first)].view(rows, stop - first)
        rows_ = slice(row, row + rows)
        if first < w:
            weight[rows_, first : min(stop, w)] = values(layer.weight_key,
                                                         block[:, : min(stop, w) - first])
        if bias is not None and first <= w < stop:
            bias[rows_] = values(layer.bias_key, block[:, w - first])


def _empty_state(manifest: TokenManifest, device: torch.device) -> dict[str, torch.Tensor]:
    """Uninitialized tensors for every tokenized entry of ``manifest``, on ``device``."""
    built = {}
    for layer in manifest.layers:
        built[layer.weight_key] = torch.empty(
            layer.weight_shape, dtype=FLOAT_DTYPES[layer.weight_dtype], device=device
        )
        if layer.bias_key is not None:
            built[layer.bias_key] = torch.empty(
                layer.rows, dtype=FLOAT_DTYPES[layer.bias_dtype], device=device
            )
    return built


def _check_range(start: int, stop: int, manifest: TokenManifest) -> None:
    if not 0 <= start <= stop <= manifest.num_tokens:
        raise FormatError(f"token range [{start}, {stop}) is outside [0, "
                          f"{manifest.num_tokens}) of this manifest")


def _check_cover(ranges: list[tuple[int, int]], num_tokens: int) -> None:
    """Raise :class:`FormatError` unless ``ranges`` tile ``[0, num_tokens)``."""
    end = 0
    for start, stop in sorted(ranges):
        if start != end:
            break
        end = stop
    else:
        if end == num_tokens:
            return
    raise FormatError(f"the token pieces must cover [0, {num_tokens}) exactly once; from "
                      f"token {end} on, tokens are missing or covered twice")


def _check_piece(start: int, piece: torch.Tensor, manifest: TokenManifest) -> None:
    """Raise :class:`FormatError` unless ``piece`` is floating, finite tokens ``[length, d_t]``
    within the manifest's range (an error names the first non-finite value's token)."""
    if not isinstance(piece, torch.Tensor) or piece.ndim != 2 \
            or piece.shape[1] != manifest.token_size:
        raise FormatError(f"token pieces must be tensors [length, {manifest.token_size}], got "
                          f"{list(getattr(piece, 'shape', []))} ({type(piece).__name__})")
    _check_range(start, start + len(piece), manifest)
    if not piece.is_floating_point():
        raise FormatError(f"tokens must be floating point, got {piece.dtype}")
    if all(torch.isfinite(piece[i : i + _CHECK_TOKENS]).all()
           for i in range(0, len(piece), _CHECK_TOKENS)):
        return
    finite = torch.isfinite(piece)
    bad = (~finite).nonzero()[0].tolist()
    raise FormatError(
        f"tokens hold {int((~finite).sum())} non-finite values (first at token "
        f"{start + bad[0]}, column {bad[1]})"
    )


def _restore_excluded(
    manifest: TokenManifest, rest: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    expected = {e.key for e in manifest.excluded}
    unexpected = sorted(set(rest) - expected)
    if unexpected:
        raise FormatError(
            f"rest holds entries that the manifest does not exclude: {unexpected[:5]}"
        )
    restored = {}
    for e in manifest.excluded:
        if e.key in rest:
            t = rest[e.key]
            if not isinstance(t, torch.Tensor):
                raise FormatError(f"rest[{e.key!r}] must be a tensor, got {type(t).__name__}")
            if tuple(t.shape) != e.shape or dtype_name(t.dtype) != e.dtype:
                raise FormatError(
                    f"rest[{e.key!r}] must have shape {list(e.shape)} and dtype {e.dtype}, got "
                    f"{list(t.shape)} and {dtype_name(t.dtype)}"
                )
            restored[e.key] = t.detach().clone()
        elif e.fill is not None:
            restored[e.key] = torch.full(e.shape, e.fill, dtype=torch_dtype(e.dtype))
        else:
            raise FormatError(
                f"{e.key!r} is not in the tokens ({e.reason}) and has no default; pass it in "
                "rest (Tokens.rest holds it)"
            )
    return restored


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
