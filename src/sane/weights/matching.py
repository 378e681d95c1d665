"""Weight matching (git re-basin, Ainsworth et al. 2022): permute a model towards a reference.

For permutations ``π`` of the hidden units we maximize ``Σ_k ⟨W_ref[k], π(W_model)[k]⟩`` over
the state-dict entries with a permuted axis, which is the same as minimizing their L2 distance
(a permutation keeps norms). Coordinate descent: with every other permutation fixed, the best
permutation of one group is a linear assignment problem on ``A[i, j] = Σ ⟨ref row i, model row
j⟩`` over the axes the group acts on (scipy's ``linear_sum_assignment``).

Differences from the public reference code: groups are visited in a *seeded* random order per
pass (the reference used the unseeded global RNG); a new assignment is accepted only if its gain
exceeds a small relative tolerance (recomputed in float64 whenever the float32 rounding of the
cost matrix could decide it), so the distance strictly decreases at every accepted step and the
loop stops at a fixed point. A group is re-solved only after a group sharing a tensor with it
changed: otherwise its assignment problem is unchanged and would return the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from scipy.optimize import linear_sum_assignment

from sane.errors import ConfigError, FormatError
from sane.weights.permutations import (
    Perms,
    PermutationSpec,
    block_index,
    identity_permutation,
)

# Gains below this fraction of ‖W_ref‖·‖W_model‖ (the largest possible objective) are rounding.
RELATIVE_TOLERANCE = 1e-10
# Cost matrices cheaper than this many multiply-adds are built on one thread: waking a thread
# team costs more than it saves there, and on a busy machine up to 20 times more.
SINGLE_THREAD_WORK = 2**23


def weight_matching(
    spec: PermutationSpec,
    reference: Mapping[str, torch.Tensor],
    model: Mapping[str, torch.Tensor],
    *,
    seed: int = 0,
    max_iter: int = 100,
    trace: list[Perms] | None = None,
) -> Perms:
    """Permutations that, applied to ``model``, bring it closest to ``reference``.

    Deterministic for a given ``seed`` (which only orders the visits of the groups). Stops at a
    fixed point (no group can improve) or after ``max_iter`` passes. If ``trace`` is a list, a
    copy of the permutations is appended after every accepted update (for monitoring).
    Returns ``{name: int64 [sizes[name]]}`` for :func:`~sane.weights.apply_permutation`.
    """
    if max_iter < 0:
        raise ConfigError(f"max_iter must be non-negative, got {max_iter}")
    _check_state_dict("reference", reference, spec)
    _check_state_dict("model", model, spec)
    for key, tensor in model.items():
        if tensor.shape != reference[key].shape:
            raise FormatError(f"{key!r}: model shape {tuple(tensor.shape)} differs from the "
                              f"reference's {tuple(reference[key].shape)}")
    keys = [k for k, names in spec.axes.items()
            if model[k].is_floating_point() and any(n is not None for n in names)]
    ref_norm = {k: _norm(reference[k], f"reference {k!r}") for k in keys}
    model_norm = {k: _norm(model[k], f"model {k!r}") for k in keys}
    groups = _groups(spec, reference, keys, {k: ref_norm[k] * model_norm[k] for k in keys})
    # The model with the permutations found so far applied, in the dtype of the cost matrices.
    current = {k: model[k].to(_work_dtype(model[k])) for k in keys}
    scale = math.hypot(*ref_norm.values()) * math.hypot(*model_norm.values())
    tolerance = RELATIVE_TOLERANCE * scale

    perms = identity_permutation(spec)
    names = list(groups)
    stale = set(names)  # groups whose assignment problem changed since they were last solved
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        if not stale:
            break
        for i in torch.randperm(len(names), generator=generator).tolist():
            group = groups[names[i]]
            if group.name not in stale:
                continue
            stale.discard(group.name)
            sigma = group.improve(current, tolerance)
            if sigma is None:
                continue
            perms[group.name] = perms[group.name][sigma]
            for k, a in group.pairs:
                current[k] = current[k].index_select(a, block_index(sigma, current[k].shape[a]))
            stale |= group.neighbours
            if trace is not None:
                trace.append({p: v.clone() for p, v in perms.items()})
    return perms


@dataclass
class _Group:
    """One permutation's assignment problem: the ``(key, axis)`` pairs it acts on."""

    name: str
    pairs: list[tuple[str, int]]
    ref_rows: list[torch.Tensor]  # the reference's tensors as [n, r], one per pair
    error_bound: float  # bound on the rounding error of a gain read off the cost matrix
    neighbours: set[str] = field(default_factory=set)  # groups sharing a tensor

    def improve(
        self, current: Mapping[str, torch.Tensor], tolerance: float
    ) -> torch.Tensor | None:
        """The best reassignment ``sigma`` of this group's rows given ``current`` (row ``i``
        takes row ``sigma[i]``), or None unless it raises the objective by more than
        ``tolerance``."""
        n = len(self.ref_rows[0])
        rows = [_rows(current[k], a, n) for k, a in self.pairs]
        cost = torch.zeros(n, n, dtype=torch.float64)
        work = n * sum(r.numel() for r in self.ref_rows)
        with _threads(1 if work < SINGLE_THREAD_WORK else None):
            for ref_rows, model_rows in zip(self.ref_rows, rows):
                cost += ref_rows @ model_rows.T
        _, assignment = linear_sum_assignment(cost.numpy(), maximize=True)
        sigma = torch.from_numpy(assignment)
        moved = torch.nonzero(sigma != torch.arange(n)).flatten()
        if len(moved) == 0:
            return None
        gain = float(cost[moved, sigma[moved]].sum() - cost[moved, moved].sum())
        if abs(gain - tolerance) <= self.error_bound:  # too close to call on the rounded cost
            gain = _exact_gain(self.ref_rows, rows, sigma, moved)
        return sigma if gain > tolerance else None


def _groups(
    spec: PermutationSpec,
    reference: Mapping[str, torch.Tensor],
    keys: list[str],
    norm_products: dict[str, float],
) -> dict[str, _Group]:
    """The assignment problem of each permutation over ``keys``, in sorted name order.

    ``norm_products[k]`` is ``‖reference[k]‖·‖model[k]‖``.
    """
    groups = {}
    for name in sorted(spec.sizes):
        pairs = [(k, a) for k, a in spec.permuted_axes(name) if k in norm_products]
        if not pairs:
            continue
        ref_rows = [_rows(reference[k].to(_work_dtype(reference[k])), a, spec.sizes[name])
                    for k, a in pairs]
        # A float dot product of length r errs by at most γ_r·Σ|x·y| (γ_r = r·u/(1 - r·u));
        # summed over the rows of the old and new assignment, Cauchy-Schwarz bounds a gain's
        # error by 2·γ_r·‖ref‖·‖model‖ per tensor.
        bound = 0.0
        for (k, _), r in zip(pairs, ref_rows):
            ru = r.shape[1] * torch.finfo(r.dtype).eps / 2
            bound += 2 * ru / (1 - ru) * norm_products[k]
        groups[name] = _Group(name, pairs, ref_rows, bound)
    for group in groups.values():
        own = {k for k, _ in group.pairs}
        group.neighbours = {other.name for other in groups.values() if other is not group
                            and own & {k for k, _ in other.pairs}}
    return groups


def distance(
    reference: Mapping[str, torch.Tensor],
    model: Mapping[str, torch.Tensor],
    spec: PermutationSpec | None = None,
) -> float:
    """L2 distance between two state dicts over their floating-point entries (float64).

    With ``spec``, only entries with at least one permuted axis count (the others do not change
    under permutations).
    """
    if set(reference) != set(model):
        raise FormatError(f"state dicts differ in keys: {sorted(set(reference) ^ set(model))[:5]}")
    keys = [k for k in reference if reference[k].is_floating_point()
            and (spec is None or any(n is not None for n in spec.axes[k]))]
    for k in keys:
        if reference[k].shape != model[k].shape:
            raise FormatError(f"{k!r}: shapes {tuple(reference[k].shape)} and "
                              f"{tuple(model[k].shape)} differ")
    return math.sqrt(sum(_sq(reference[k].double() - model[k].double()) for k in keys))


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` intra-op threads (None: leave the setting alone)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rows(tensor: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """``tensor`` as ``[n, -1]``: row ``i`` holds block ``i`` of ``axis`` with all other axes."""
    return tensor.movedim(axis, 0).reshape(n, -1)


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 for cost matrices (float64 inputs keep their precision)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _norm(tensor: torch.Tensor, what: str) -> float:
    """The L2 norm of ``tensor``; raises :class:`FormatError` if it is not finite."""
    value = float(torch.linalg.vector_norm(tensor.to(_work_dtype(tensor))))
    if not math.isfinite(value):  # a NaN/inf entry, or an overflow of the float32 sum
        if not bool(torch.isfinite(tensor).all()):
            raise FormatError(f"{what} has non-finite values")
        value = float(torch.linalg.vector_norm(tensor.double()))
    return value


def _exact_gain(
    ref_rows: list[torch.Tensor],
    rows: list[torch.Tensor],
    sigma: torch.Tensor,
    moved: torch.Tensor,
) -> float:
    """Objective change of reassigning the ``moved`` rows ``i → sigma[i]``, summed in float64."""
    gain = 0.0
    for ref, model_rows in zip(ref_rows, rows):
        r = ref[moved].double()
        gain += float((r * (model_rows[sigma[moved]].double() - model_rows[moved].double())).sum())
    return gain


def _sq(tensor: torch.Tensor) -> float:
    return float(tensor.double().square().sum())


def _check_state_dict(
    what: str, state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec
) -> None:
    if set(state_dict) != set(spec.axes):
        missing = sorted(set(spec.axes) - set(state_dict))
        extra = sorted(set(state_dict) - set(spec.axes))
        raise FormatError(f"{what} state dict does not match the spec: missing keys "
                          f"{missing[:5]}, unexpected {extra[:5]}")
    for key, tensor in state_dict.items():
        names = spec.axes[key]
        if tensor.dim() != len(names) or any(
            n is not None and tensor.shape[a] % spec.sizes[n] for a, n in enumerate(names)
        ):
            raise FormatError(f"{what} state dict: {key!r} has shape {tuple(tensor.shape)}, "
                              f"which does not fit the spec's axes {names}")
