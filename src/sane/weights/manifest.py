"""What a tokenization is: the layout of tokens and how to read it back.

A :class:`TokenManifest` describes one architecture's tokenization: the state dict's key order,
one :class:`TokenLayer` per tokenized tensor (its bias, shapes, dtypes, rows and token range)
and the :class:`ExcludedTensor` entries kept out of the tokens. Construction checks that these
parts agree; the manifest gives each token's position, chunk and padding mask, checks a state
dict against itself, and converts to and from JSON (:meth:`TokenManifest.to_dict`,
:meth:`TokenManifest.from_dict`). :mod:`sane.weights.tokenize` plans manifests and uses them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sane.errors import FormatError

FORMAT = "sane-tokens"
VERSION = 1

#: Dtypes a tokenized tensor may have; tokens are float64 if any tensor is, else float32.
FLOAT_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class TokenLayer:
    """One tokenized tensor (with its bias), occupying tokens ``[start, stop)``.

    Row ``k`` of the matrix ``[rows, row_length]`` is tokens
    ``[start + k·tokens_per_row, start + (k+1)·tokens_per_row)``; within a row the weight's
    ``row_length - has_bias`` values come first, then the bias.
    """

    weight_key: str
    bias_key: str | None
    weight_shape: tuple[int, ...]
    weight_dtype: str
    bias_dtype: str | None
    rows: int
    row_length: int
    tokens_per_row: int
    start: int

    @property
    def weight_columns(self) -> int:
        """Values of the weight in each row: ``prod(weight_shape[1:])`` (1 for 0-d and 1-D)."""
        return self.row_length - (self.bias_key is not None)

    @property
    def num_tokens(self) -> int:
        return self.rows * self.tokens_per_row

    @property
    def stop(self) -> int:
        return self.start + self.num_tokens

    def keys(self) -> tuple[str, ...]:
        """The state-dict keys of this layer: the weight, then the bias if it has one."""
        return (self.weight_key,) if self.bias_key is None else (self.weight_key, self.bias_key)


@dataclass(frozen=True)
class ExcludedTensor:
    """A state-dict entry that is not in the tokens.

    ``reason`` is ``"batchnorm"``, ``"not floating point"`` or ``"empty"``; ``fill`` is the
    value a fresh module would hold (batch-norm entries only), else ``None``.
    """

    key: str
    shape: tuple[int, ...]
    dtype: str
    reason: str
    fill: float | None


@dataclass(frozen=True)
class TokenManifest:
    """Everything needed to turn tokens ``[num_tokens, token_size]`` back into a state dict.

    ``keys`` is the state dict's key order; ``layers[l]`` describes layer ``l``; ``excluded``
    lists the entries kept out of the tokens. Construction checks that all of it is consistent.
    """

    token_size: int
    num_tokens: int
    keys: tuple[str, ...]
    layers: tuple[TokenLayer, ...]
    excluded: tuple[ExcludedTensor, ...]
    include_batchnorm: bool = False

    def __post_init__(self) -> None:
        _check_manifest(self)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the tokens: float64 if any tokenized tensor is float64, else float32."""
        dtypes = {d for layer in self.layers for d in (layer.weight_dtype, layer.bias_dtype)}
        return torch.float64 if "float64" in dtypes else torch.float32

    def tokenized_keys(self) -> tuple[str, ...]:
        """State-dict keys that enter the tokens, in token order (each weight before its bias)."""
        return tuple(key for layer in self.layers for key in layer.keys())

    def positions(self) -> torch.Tensor:
        """``[N, 3]`` int64: per token ``(n, l, k)`` = (index, layer, row within the layer)."""
        counts = torch.tensor([layer.num_tokens for layer in self.layers])
        layer = torch.repeat_interleave(torch.arange(len(self.layers)), counts)
        row = torch.cat([
            torch.arange(ly.rows).repeat_interleave(ly.tokens_per_row) for ly in self.layers
        ])
        return torch.stack([torch.arange(self.num_tokens), layer, row], dim=1)

    def chunks(self) -> torch.Tensor:
        """``[N]`` int64: per token, its index among the tokens of its row (0 for short rows)."""
        return torch.cat([torch.arange(ly.tokens_per_row).repeat(ly.rows) for ly in self.layers])

    def mask(self) -> torch.Tensor:
        """``[N, d_t]`` bool: True where a real weight or bias sits, False on padding.

        The same for every state dict of the architecture, so a token store keeps one copy.
        """
        blocks = []
        for ly in self.layers:
            row = torch.arange(ly.tokens_per_row * self.token_size) < ly.row_length
            blocks.append(row.expand(ly.rows, -1).reshape(ly.num_tokens, self.token_size))
        return torch.cat(blocks)

    def check_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], *, finite: bool = True
    ) -> None:
        """Raise :class:`FormatError` unless every tokenized entry of ``state_dict`` is a tensor
        with this manifest's shape and dtype, and (``finite``) holds no NaN or infinity.
        Other entries are not looked at."""
        for layer in self.layers:
            _check_entry(state_dict, layer.weight_key, layer.weight_shape, layer.weight_dtype,
                         finite)
            if layer.bias_key is not None:
                _check_entry(state_dict, layer.bias_key, (layer.rows,), layer.bias_dtype, finite)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description (inverse of :meth:`from_dict`)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "token_size": self.token_size,
            "num_tokens": self.num_tokens,
            "include_batchnorm": self.include_batchnorm,
            "keys": list(self.keys),
            "layers": [
                {
                    "weight_key": ly.weight_key,
                    "bias_key": ly.bias_key,
                    "weight_shape": list(ly.weight_shape),
                    "weight_dtype": ly.weight_dtype,
                    "bias_dtype": ly.bias_dtype,
                    "rows": ly.rows,
                    "row_length": ly.row_length,
                    "tokens_per_row": ly.tokens_per_row,
                    "start": ly.start,
                }
                for ly in self.layers
            ],
            "excluded": [
                {"key": e.key, "shape": list(e.shape), "dtype": e.dtype, "reason": e.reason,
                 "fill": e.fill}
                for e in self.excluded
            ],
        }

    @classmethod
    def from_dict(cls, d: Any) -> TokenManifest:
        """Read :meth:`to_dict`'s output; raise :class:`FormatError` if anything is off."""
        try:
            if d.get("format") != FORMAT or d.get("version") != VERSION:
                raise FormatError(
                    f"expected a {FORMAT!r} manifest of version {VERSION}, got format "
                    f"{d.get('format')!r} version {d.get('version')!r}"
                )
            layers = tuple(
                TokenLayer(
                    weight_key=_str(ly["weight_key"]),
                    bias_key=None if ly["bias_key"] is None else _str(ly["bias_key"]),
                    weight_shape=_shape(ly["weight_shape"]),
                    weight_dtype=_str(ly["weight_dtype"]),
                    bias_dtype=None if ly["bias_dtype"] is None else _str(ly["bias_dtype"]),
                    rows=_int(ly["rows"]),
                    row_length=_int(ly["row_length"]),
                    tokens_per_row=_int(ly["tokens_per_row"]),
                    start=_int(ly["start"]),
                )
                for ly in d["layers"]
            )
            excluded = tuple(
                ExcludedTensor(
                    key=_str(e["key"]),
                    shape=_shape(e["shape"]),
                    dtype=_str(e["dtype"]),
                    reason=_str(e["reason"]),
                    fill=None if e["fill"] is None else float(e["fill"]),
                )
                for e in d["excluded"]
            )
            include_batchnorm = d["include_batchnorm"]
            if not isinstance(include_batchnorm, bool):
                raise FormatError(f"include_batchnorm must be a boolean, got {include_batchnorm!r}")
            return cls(
                token_size=_int(d["token_size"]),
                num_tokens=_int(d["num_tokens"]),
                keys=tuple(_str(k) for k in d["keys"]),
                layers=layers,
                excluded=excluded,
                include_batchnorm=include_batchnorm,
            )
        except FormatError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise FormatError(f"malformed token manifest: {type(e).__name__}: {e}") from e


def _check_entry(
    state_dict: Mapping[str, torch.Tensor],
    key: str,
    shape: tuple[int, ...],
    dtype: str | None,
    finite: bool,
) -> None:
    t = state_dict.get(key)
    if not isinstance(t, torch.Tensor):
        raise FormatError(f"state dict entry {key!r} is missing or not a tensor")
    if tuple(t.shape) != shape or dtype_name(t.dtype) != dtype:
        raise FormatError(
            f"state dict entry {key!r} must have shape {list(shape)} and dtype {dtype}, got "
            f"{list(t.shape)} and {dtype_name(t.dtype)}"
        )
    if finite and not torch.isfinite(t).all():
        raise FormatError(f"state dict entry {key!r} holds non-finite values (NaN or infinity)")


def rows_and_length(shape: tuple[int, ...] | torch.Size, has_bias: bool) -> tuple[int, int]:
    """``(rows, row_length)`` of a weight viewed as ``[shape[0], prod(shape[1:])]`` + bias."""
    if len(shape) == 0:
        return 1, 1 + has_bias
    return shape[0], math.prod(shape[1:]) + has_bias


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"`` (the spelling stored in manifests)."""
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` → ``torch.float32``; :class:`FormatError` for anything else."""
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise FormatError(f"unknown dtype {name!r}")
    return dtype


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise FormatError(f"expected a string, got {value!r}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"expected an integer, got {value!r}")
    return value


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or any(_int(s) < 0 for s in value):
        raise FormatError(f"expected a shape (list of non-negative integers), got {value!r}")
    return tuple(value)


def _check_manifest(m: TokenManifest) -> None:
    """Raise :class:`FormatError` unless the manifest's parts agree with each other."""
    if m.token_size < 1:
        raise FormatError(f"token_size must be positive, got {m.token_size}")
    if len(set(m.keys)) != len(m.keys):
        raise FormatError("the manifest's keys are not unique")
    start = 0
    described: list[str] = []
    for index, ly in enumerate(m.layers):
        where = f"layer {index} ({ly.weight_key!r})"
        if ly.weight_dtype not in FLOAT_DTYPES or (
            ly.bias_key is not None and ly.bias_dtype not in FLOAT_DTYPES
        ):
            raise FormatError(f"{where}: dtypes must be among {sorted(FLOAT_DTYPES)}")
        if (ly.bias_key is None) != (ly.bias_dtype is None):
            raise FormatError(f"{where}: bias_key and bias_dtype must both be set or both null")
        if math.prod(ly.weight_shape) == 0:
            raise FormatError(f"{where}: an empty tensor cannot be tokenized")
        rows, row_length = rows_and_length(ly.weight_shape, ly.bias_key is not None)
        if (ly.rows, ly.row_length) != (rows, row_length):
            raise FormatError(
                f"{where}: shape {list(ly.weight_shape)} gives {rows} rows of {row_length}, "
                f"the manifest says {ly.rows} of {ly.row_length}"
            )
        if ly.tokens_per_row != math.ceil(row_length / m.token_size):
            raise FormatError(f"{where}: tokens_per_row {ly.tokens_per_row} does not match "
                              f"row_length {row_length} and token_size {m.token_size}")
        if ly.start != start:
            raise FormatError(f"{where}: starts at token {ly.start}, expected {start}")
        start = ly.stop
        described += ly.keys()
    if m.num_tokens != start:
        raise FormatError(f"num_tokens is {m.num_tokens} but the layers hold {start} tokens")
    for e in m.excluded:
        torch_dtype(e.dtype)
        described.append(e.key)
    if sorted(described) != sorted(m.keys) or len(described) != len(set(described)):
        raise FormatError(
            "every key must be in exactly one layer or in excluded; mismatched: "
            f"{sorted(set(described) ^ set(m.keys))[:5]}"
        )
