"""Augmentations of token windows: model permutations as index maps, and noise.

A permutation of a whole model (one random index per permutation group of a
:class:`~sane.weights.permutations.PermutationSpec`) moves *rows* between tokens (the output
permutation of a layer reorders its rows) and *columns* inside rows (the input permutation of a
layer reorders blocks of its weight columns: one kernel, or one flattened feature map, per input
unit; the bias column stays last). Both are index arithmetic on the flat token array of the
unpermuted model, so a window of the permuted model is one gather:

    window[t, i] = flat[source[t, i]]   (0 where source is -1, i.e. on padding)

and the permuted model is never built. This replaces the reference code's practice of storing
many permuted copies of every sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from sane.errors import ConfigError, FormatError
from sane.weights.manifest import TokenManifest
from sane.weights.permutations import PermutationSpec

_PADDING = -(2**62)


@dataclass(frozen=True)
class _LayerMap:
    """How one token layer moves: its rows follow ``row_perm``, blocks of ``block`` weight
    columns follow ``col_perm`` (``None``: that side does not move)."""

    start: int
    tokens_per_row: int
    row_length: int
    weight_columns: int
    row_perm: str | None
    col_perm: str | None
    block: int


class WindowPermuter:
    """Gather indices of token windows of a permuted model, from the manifest and the spec.

    Built once per token store; :meth:`source` costs ``O(window · d_t)`` whatever the model's
    size.
    """

    def __init__(self, manifest: TokenManifest, spec: PermutationSpec) -> None:
        self.manifest = manifest
        self.spec = spec
        positions = manifest.positions().numpy()
        self._layer = positions[:, 1]
        self._row = positions[:, 2]
        self._chunk = manifest.chunks().numpy()
        self._maps = [self._layer_map(ly) for ly in manifest.layers]

    def _layer_map(self, layer) -> _LayerMap:
        names = self.spec.axes.get(layer.weight_key)
        if names is None:
            raise ConfigError(f"the permutation spec has no entry for {layer.weight_key!r}; "
                              "it was derived from another architecture")
        if len(names) != len(layer.weight_shape):
            raise ConfigError(f"{layer.weight_key!r}: the spec has {len(names)} axes, the "
                              f"tensor {len(layer.weight_shape)}")
        if any(n is not None for n in names[2:]):
            raise ConfigError(f"{layer.weight_key!r}: permuted kernel axes are not supported")
        row_perm = names[0] if names else None
        col_perm = names[1] if len(names) > 1 else None
        block = 1
        if col_perm is not None:
            fan_in, size = layer.weight_shape[1], self.spec.sizes[col_perm]
            if fan_in % size:
                raise ConfigError(f"{layer.weight_key!r}: input axis {fan_in} is not a multiple "
                                  f"of permutation {col_perm!r} ({size})")
            block = layer.weight_columns // size
        bias_axes = self.spec.axes.get(layer.bias_key, (None,)) if layer.bias_key else None
        if bias_axes is not None and bias_axes[0] != row_perm:
            raise ConfigError(f"{layer.bias_key!r} is permuted differently from its weight")
        return _LayerMap(layer.start, layer.tokens_per_row, layer.row_length,
                         layer.weight_columns, row_perm, col_perm, block)

    def source(
        self, perms: Mapping[str, torch.Tensor] | None, start: int, length: int
    ) -> np.ndarray:
        """``[length, d_t]`` int64: for tokens ``[start, start + length)`` of the model permuted
        by ``perms``, the index of each value in the unpermuted model's flat tokens ``[N·d_t]``,
        or -1 on padding. ``perms=None`` is the identity.

        ``perms`` must hold one permutation per group of the spec (as drawn by
        :func:`~sane.weights.permutations.random_permutation`); only names and sizes are checked
        here, since this runs once per training sample.
        """
        n, d = self.manifest.num_tokens, self.manifest.token_size
        if start < 0 or length < 1 or start + length > n:
            raise FormatError(f"window [{start}, {start + length}) outside the {n} tokens")
        if perms is not None:
            for name, size in self.spec.sizes.items():
                if name not in perms or tuple(perms[name].shape) != (size,):
                    raise FormatError(f"permutation {name!r} of size {size} missing or malformed")
        out = np.empty((length, d), dtype=np.int64)
        # Layers occupy contiguous token ranges: walk the window layer by layer.
        first, last = self._layer[start], self._layer[start + length - 1]
        for layer in range(first, last + 1):
            a = max(start, self.manifest.layers[layer].start)
            b = min(start + length, self.manifest.layers[layer].stop)
            self._layer_source(self._maps[layer], perms, np.arange(a, b), d,
                               out[a - start : b - start])
        return out

    def _layer_source(
        self,
        m: _LayerMap,
        perms: Mapping[str, torch.Tensor] | None,
        tokens: np.ndarray,
        d: int,
        out: np.ndarray,
    ) -> None:
        """Write the sources of ``tokens`` (all of layer ``m``) into ``out`` ``[T, d]``."""
        # Where each value of a permuted row comes from within its source row, padding marked by
        # a large negative offset that stays negative after the row's base is added.
        cols = np.arange(m.tokens_per_row * d)
        within = np.where(cols < m.row_length, cols, _PADDING)
        if perms is not None and m.col_perm is not None:
            units = np.asarray(perms[m.col_perm])[cols[: m.weight_columns] // m.block]
            within[: m.weight_columns] = units * m.block + cols[: m.weight_columns] % m.block
        rows = self._row[tokens]
        if perms is not None and m.row_perm is not None:
            rows = np.asarray(perms[m.row_perm])[rows]
        base = (m.start + rows * m.tokens_per_row) * d
        np.add(within.reshape(m.tokens_per_row, d)[self._chunk[tokens]], base[:, None], out=out)
        np.maximum(out, -1, out=out)


def gather_window(
    flat: np.ndarray | torch.Tensor, source: np.ndarray, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``[length, d_t]`` values of ``flat`` ``[N·d_t]`` at ``source`` (0 where it is -1),
    written into ``out`` (a contiguous float32 CPU tensor of that shape) when given."""
    values = np.asarray(flat)
    target = np.empty(source.shape, dtype=values.dtype) if out is None else out.numpy()
    np.take(values, np.maximum(source, 0), out=target)
    target[source < 0] = 0
    return torch.from_numpy(target) if out is None else out


def add_noise(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator,
    *,
    multiplicative: float = 0.0,
    additive: float = 0.0,
) -> torch.Tensor:
    """``tokens · (1 + m·ε₁) + a·ε₂`` on real values (``mask``), padding left at 0.

    ``ε₁, ε₂ ~ N(0, 1)`` are drawn from ``generator``; both scales are standard deviations on
    the standardized weights. Returns a new tensor.
    """
    if multiplicative < 0 or additive < 0:
        raise ConfigError("noise scales must be non-negative")
    out = tokens.clone()
    if multiplicative:
        # Padding is 0 and stays 0 under a multiplicative perturbation.
        factor = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        out.mul_(factor.mul_(multiplicative).add_(1))
    if additive:
        shift = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        out.add_(shift.mul_(additive).mul_(mask))
    return out
