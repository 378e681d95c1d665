"""Per-tensor standardization of weights, fitted once on a zoo's training split.

Each state-dict tensor (a weight and its bias separately; each batch-norm tensor separately)
gets one mean and one standard deviation, pooled over all elements of that tensor in all fitted
state dicts: the mean and population variance of the concatenation, computed in float64 by
streaming (Chan et al.'s pairwise update), not a mean of per-model statistics. A tensor that is
constant over the whole fit (standard deviation 0) gets standard deviation 1, so it is only
shifted.

Every tensor is standardized exactly once, ``(x - mean) / std``, and the same statistics are
applied to every split. :meth:`Standardization.invert` undoes it up to floating-point rounding:
both directions compute in float64 and return the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sane.errors import FormatError

FORMAT = "sane-standardization"
VERSION = 1


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one state-dict entry: ``count`` elements pooled over the fit."""

    mean: float
    std: float
    count: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Standardization:
    """Per-tensor ``(mean, std)``; keys in the order they were fitted."""

    stats: Mapping[str, TensorStats]

    def apply(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``(x - mean) / std`` for every fitted key; other entries pass through untouched."""
        return self._map(state_dict, forward=True)

    def invert(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``x · std + mean`` for every fitted key; other entries pass through untouched."""
        return self._map(state_dict, forward=False)

    def _map(
        self, state_dict: Mapping[str, torch.Tensor], forward: bool
    ) -> dict[str, torch.Tensor]:
        out = dict(state_dict)
        for key, s in self.stats.items():
            t = state_dict.get(key)
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise FormatError(f"state dict entry {key!r} is missing or not a floating tensor")
            if tuple(t.shape) != s.shape:
                raise FormatError(
                    f"state dict entry {key!r} has shape {list(t.shape)}, the standardization "
                    f"was fitted on {list(s.shape)}"
                )
            out[key] = _affine(t.detach(), s, forward)
        return out

    def standardize(self, key: str, values: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` of ``values``, any part of entry ``key`` (element-wise, so a
        part gets the bits of :meth:`apply` of the whole entry); an entry not fitted passes
        through."""
        s = self.stats.get(key)
        return values if s is None else _affine(values, s, forward=True)

    def destandardize(self, key: str, values: torch.Tensor) -> torch.Tensor:
        """``x · std + mean`` of ``values``, any part of entry ``key``: :meth:`invert`
        element-wise."""
        s = self.stats.get(key)
        return values if s is None else _affine(values, s, forward=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description (inverse of :meth:`from_dict`)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "statistic": "pooled mean and population standard deviation per tensor",
            "tensors": [
                {"key": key, "mean": s.mean, "std": s.std, "count": s.count,
                 "shape": list(s.shape)}
                for key, s in self.stats.items()
            ],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Standardization:
        """Read :meth:`to_dict`'s output; raise :class:`FormatError` if anything is off."""
        try:
            if d.get("format") != FORMAT or d.get("version") != VERSION:
                raise FormatError(
                    f"expected a {FORMAT!r} description of version {VERSION}, got format "
                    f"{d.get('format')!r} version {d.get('version')!r}"
                )
            stats: dict[str, TensorStats] = {}
            for entry in d["tensors"]:
                key = entry["key"]
                if not isinstance(key, str) or key in stats:
                    raise FormatError(f"tensor keys must be unique strings, got {key!r}")
                mean, std, count = float(entry["mean"]), float(entry["std"]), entry["count"]
                shape = entry["shape"]
                if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                    raise FormatError(f"{key!r}: mean must be finite and std finite and positive, "
                                      f"got {mean} and {std}")
                if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                    raise FormatError(f"{key!r}: count must be a positive integer, got {count!r}")
                if not isinstance(shape, list) or any(
                    isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape
                ):
                    raise FormatError(f"{key!r}: shape must be a list of non-negative integers, "
                                      f"got {shape!r}")
                stats[key] = TensorStats(mean, std, count, tuple(shape))
            return cls(stats)
        except FormatError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise FormatError(f"malformed standardization: {type(e).__name__}: {e}") from e


def _affine(x: torch.Tensor, s: TensorStats, forward: bool) -> torch.Tensor:
    """``(x - mean) / std`` (``forward``) or ``x · std + mean``, computed in float64, returned
    in ``x``'s dtype."""
    y = x.to(torch.float64)
    y = (y - s.mean) / s.std if forward else y * s.std + s.mean
    return y.to(x.dtype)


def fit_standardization(
    state_dicts: Iterable[Mapping[str, torch.Tensor]], keys: Sequence[str] | None = None
) -> Standardization:
    """Fit per-tensor statistics over ``state_dicts`` (e.g. every checkpoint of the train split).

    ``keys`` defaults to every non-empty floating-point entry of the first state dict; a token
    pipeline passes ``TokenManifest.tokenized_keys()`` so that entries kept out of the tokens
    (and later refilled with defaults) are never transformed. Streams: each state dict is read
    once and not kept.
    """
    running: dict[str, tuple[int, float, float]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    count = 0
    for index, state_dict in enumerate(state_dicts):
        if index == 0:
            keys = _keys_to_fit(state_dict, keys)
        for key in keys:
            t = state_dict.get(key)
            where = f"state dict {index}, entry {key!r}"
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
                raise FormatError(f"{where}: expected a non-empty floating tensor")
            if tuple(t.shape) != shapes.setdefault(key, tuple(t.shape)):
                raise FormatError(f"{where}: shape {list(t.shape)} differs from the first state "
                                  f"dict's {list(shapes[key])}")
            # A NaN or infinity anywhere makes the mean or variance non-finite, so checking
            # those two numbers checks the whole tensor.
            var, mean = torch.stack(torch.var_mean(t.detach().double(), correction=0)).tolist()
            if not (math.isfinite(mean) and math.isfinite(var)):
                raise FormatError(f"{where}: holds non-finite values")
            batch = (t.numel(), mean, var * t.numel())
            running[key] = _combine(running[key], batch) if key in running else batch
        count += 1
    if count == 0:
        raise FormatError("cannot fit a standardization on zero state dicts")
    stats = {}
    for key in keys:
        n, mean, m2 = running[key]
        std = math.sqrt(m2 / n)
        stats[key] = TensorStats(mean, std if std > 0 else 1.0, n, shapes[key])
    return Standardization(stats)


def _keys_to_fit(
    state_dict: Mapping[str, torch.Tensor], keys: Sequence[str] | None
) -> list[str]:
    if keys is None:
        keys = [k for k, t in state_dict.items()
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 0]
    keys = list(keys)
    if not keys or len(set(keys)) != len(keys):
        raise FormatError(f"keys must be a non-empty list of distinct keys, got {keys[:5]}")
    return keys


def _combine(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Merge ``(count, mean, sum of squared deviations)`` of two disjoint sets of values."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n
