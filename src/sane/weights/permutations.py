"""Permutation symmetries of a network: which axes move together, and the algebra to move them.

Reordering the hidden units of a layer (the rows of its weight and bias and the matching
batch-norm entries) together with the input columns of every layer that reads them leaves the
network's function unchanged. A :class:`PermutationSpec` records which tensor axes move together.

:func:`permutation_spec` derives the spec of a model from its traced module graph; the tracing
itself (which layers keep, start or merge a channel group, and what is refused) is
:mod:`sane.weights.channels`. The entry point lives here, beside the spec it returns, so callers
import one module for the spec, its derivation and its application.

A permutation ``perm`` of size ``n`` acts on a tensor axis by ``new = old.index_select(axis,
perm)`` (entry ``i`` of the result is entry ``perm[i]`` of the original). If the axis has size
``m·n`` it acts on ``n`` contiguous blocks of ``m`` entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sane.errors import ConfigError, FormatError
from sane.weights.channels import trace_channel_groups

Perms = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PermutationSpec:
    """Which axes of which state-dict entries each permutation acts on.

    ``sizes`` maps a permutation name to its size (the number of hidden units it reorders).
    ``axes`` maps every state-dict key to one entry per tensor axis: the name of the permutation
    acting on that axis, or ``None``. Keys without permuted axes (the first layer's input side,
    the last layer's output side, ``num_batches_tracked``) are listed too.
    """

    sizes: dict[str, int]
    axes: dict[str, tuple[str | None, ...]]

    def __post_init__(self) -> None:
        for name, size in self.sizes.items():
            if not isinstance(name, str) or not isinstance(size, int) or size < 1:
                raise FormatError(f"permutation {name!r}: size must be a positive int, "
                                  f"got {size!r}")
        for key, names in self.axes.items():
            unknown = [n for n in names if n is not None and n not in self.sizes]
            if unknown:
                raise FormatError(f"spec key {key!r}: unknown permutations {unknown}")

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": dict(self.sizes), "axes": {k: list(v) for k, v in self.axes.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PermutationSpec:
        if not isinstance(d, Mapping) or set(d) != {"sizes", "axes"}:
            raise FormatError("a permutation spec needs exactly the keys 'sizes' and 'axes'")
        sizes, axes = d["sizes"], d["axes"]
        if not isinstance(sizes, Mapping) or not isinstance(axes, Mapping):
            raise FormatError("permutation spec: 'sizes' and 'axes' must be objects")
        for key, names in axes.items():
            if not isinstance(names, list | tuple):
                raise FormatError(f"spec key {key!r}: axes must be a list, got {names!r}")
        return cls(sizes=dict(sizes), axes={k: tuple(v) for k, v in axes.items()})

    def permuted_axes(self, name: str) -> list[tuple[str, int]]:
        """The ``(key, axis)`` pairs permutation ``name`` acts on, in state-dict order."""
        return [(k, a) for k, names in self.axes.items() for a, n in enumerate(names) if n == name]


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """Derive the permutation spec of ``model`` from its ``torch.fx`` graph.

    Permutations are named after the first layer (in graph order) producing their channel
    group, e.g. ``"module_list.0"`` or ``"layer1.0.conv1"``; the names depend on the model's
    structure only. A model the tracer cannot follow (see :mod:`sane.weights.channels`) raises
    :class:`~sane.errors.ConfigError` naming the graph node.
    """
    sizes, axes = trace_channel_groups(model)
    return PermutationSpec(sizes=sizes, axes=axes)


# -- applying permutations ----------------------------------------------------------------------
def identity_permutation(spec: PermutationSpec) -> Perms:
    """``arange(n)`` for every permutation of ``spec``."""
    return {name: torch.arange(n) for name, n in spec.sizes.items()}


def random_permutation(spec: PermutationSpec, generator: torch.Generator) -> Perms:
    """A uniformly random permutation per group, drawn from ``generator`` in ``sizes`` order."""
    return {name: torch.randperm(n, generator=generator) for name, n in spec.sizes.items()}


def embedding_views(spec: PermutationSpec | None, count: int, seed: int = 0
                    ) -> list[Perms | None]:
    """``[None, p_1, ..., p_count]``: the identity (None) and ``count`` random permutations
    drawn in order from a generator seeded with ``seed``, the views of a model whose
    embeddings are averaged; ``[None]`` when ``spec`` is None (nothing to permute)."""
    if count < 0:
        raise ConfigError(f"the number of permutations must be >= 0, got {count}")
    if spec is None:
        return [None]
    generator = torch.Generator().manual_seed(seed)
    return [None, *(random_permutation(spec, generator) for _ in range(count))]


def invert(perms: Perms) -> Perms:
    """The inverse permutations: applying ``perms`` then ``invert(perms)`` is the identity."""
    return {name: torch.argsort(p) for name, p in perms.items()}


def compose(first: Perms, then: Perms) -> Perms:
    """The permutations equal to applying ``first``, then ``then``."""
    return {name: first[name][then[name]] for name in first}


def apply_permutation(
    state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec, perms: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A new state dict with ``perms`` applied along the axes of ``spec`` (exact gathers).

    Dtypes are preserved; tensors without permuted axes are shared with ``state_dict``, not
    copied.
    """
    check_permutations(spec, perms)
    if set(state_dict) != set(spec.axes):
        raise FormatError(_key_mismatch("state dict", state_dict, spec))
    return {key: _permuted(key, tensor, spec, perms) for key, tensor in state_dict.items()}


class PermutedState(Mapping[str, torch.Tensor]):
    """``apply_permutation(state_dict, spec, perms)`` made entry by entry as it is read, the
    last two entries read kept (a layer's weight and bias), so that a permuted model is read
    in order (e.g. by :func:`~sane.weights.token_ranges.token_reader`) without a permuted copy
    of all its weights."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec,
                 perms: Mapping[str, torch.Tensor]) -> None:
        check_permutations(spec, perms)
        if set(state_dict) != set(spec.axes):
            raise FormatError(_key_mismatch("state dict", state_dict, spec))
        self._state, self._spec, self._perms = state_dict, spec, perms
        self._recent: dict[str, torch.Tensor] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._recent:
            tensor = _permuted(key, self._state[key], self._spec, self._perms)
            self._recent = {**dict(list(self._recent.items())[-1:]), key: tensor}
        return self._recent[key]

    def __iter__(self):
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def _permuted(key: str, tensor: torch.Tensor, spec: PermutationSpec,
              perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Entry ``key`` of the state dict, ``tensor``, gathered along its permuted axes."""
    names = spec.axes[key]
    if tensor.dim() != len(names):
        raise FormatError(
            f"state dict key {key!r}: {tensor.dim()}-d tensor, the spec has {len(names)} axes"
        )
    for axis, name in enumerate(names):
        if name is not None:
            index = block_index(perms[name], tensor.shape[axis], f"{key!r} axis {axis}")
            tensor = tensor.index_select(axis, index)
    return tensor


def block_index(perm: torch.Tensor, size: int, where: str = "axis") -> torch.Tensor:
    """The gather index of ``perm`` (size ``n``) on an axis of ``size = m·n`` entries: ``[size]``.

    Block ``i`` of the result (``m`` contiguous entries) is block ``perm[i]`` of the input.
    """
    n = len(perm)
    if size == n:
        return perm
    if size % n:
        raise FormatError(f"{where}: size {size} is not a multiple of the permutation size {n}")
    m = size // n
    return (perm[:, None] * m + torch.arange(m)).reshape(-1)


def check_permutations(spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`FormatError` unless ``perms`` holds one valid permutation per group."""
    if set(perms) != set(spec.sizes):
        missing, extra = sorted(set(spec.sizes) - set(perms)), sorted(set(perms) - set(spec.sizes))
        raise FormatError(f"permutations do not match the spec: missing {missing}, extra {extra}")
    for name, n in spec.sizes.items():
        p = perms[name]
        if p.dtype != torch.int64 or p.shape != (n,):
            raise FormatError(f"permutation {name!r}: expected int64 of shape ({n},), "
                              f"got {p.dtype} of shape {tuple(p.shape)}")
        if not torch.equal(torch.sort(p).values, torch.arange(n)):
            raise FormatError(f"permutation {name!r} is not a permutation of 0..{n - 1}")


def _key_mismatch(what: str, keys: Mapping[str, Any], spec: PermutationSpec) -> str:
    missing, extra = sorted(set(spec.axes) - set(keys)), sorted(set(keys) - set(spec.axes))
    return f"{what} does not match the spec: missing keys {missing[:5]}, unexpected {extra[:5]}"
