"""Any range of a state dict's tokens, made and written piece by piece, with the bits of the
whole-sequence functions of :mod:`sane.weights.tokenize`.

:func:`token_reader` makes the tokens ``[start, stop)`` of a state dict when asked, so that a
large model is encoded without a tokenized copy of it; :func:`detokenize_pieces` writes
tokens into a state dict range by range as they arrive (e.g. from a decoder), so that the
whole sequence is never held. A range may cut rows anywhere: a layer's tokens are its row
matrix ``[rows, tokens_per_row · d_t]`` in row-major order, so a token range of a layer is a
range of that matrix's values, some whole rows with at most a part of a row on either side.
Both take an element-wise ``transform(key, values)`` (standardization, and its inverse).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch

from sane.errors import FormatError
from sane.weights.manifest import (
    FLOAT_DTYPES,
    TokenLayer,
    TokenManifest,
    dtype_name,
    torch_dtype,
)

#: Tokens checked for finiteness at a time (bounds the boolean temporary).
_CHECK_TOKENS = 4096


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
            fill_tokens(layer, state_dict, out[low - start : high - start], low, transform)
        return out

    return read


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
    for key, value in restore_excluded(manifest, rest or {}).items():
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


def fill_tokens(
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


def restore_excluded(
    manifest: TokenManifest, rest: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The entries ``manifest`` keeps out of the tokens: copies of those in ``rest``, else
    their defaults (a fresh batch-norm module's values); FormatError for anything else."""
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
