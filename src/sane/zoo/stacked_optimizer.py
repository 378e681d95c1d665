"""torch's Adam and SGD with momentum for the models of a stacked network, each with its own
hyperparameters (:mod:`sane.zoo.population`), and each model's optimizer state in and out in
torch's per-model form, so that a checkpoint resumes a model alone or in any group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from sane.errors import FormatError

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class StackedParameters(Protocol):
    """What the optimizer reads of a :class:`~sane.zoo.population.StackedNet` (or
    ``SingleNet``): ``k`` models whose rows ``[k·rows[i], (k+1)·rows[i])`` of ``params[i]``
    are model ``k``'s tensor ``keys[k][i]``."""

    k: int
    params: list[torch.Tensor]
    rows: list[int]
    keys: list[list[str]]


class StackedOptimizer:
    """torch's Adam and SGD (with momentum) for the models of a
    :class:`~sane.zoo.population.StackedNet` (or the one model of a ``SingleNet``).

    Model ``k`` uses ``kinds[k]`` (``"adam"`` or ``"sgd"``) with its own ``lr``,
    ``weight_decay`` (L2, added to the gradient as in ``torch.optim``) and ``momentum`` (SGD).
    Models must be ordered by kind so that each kind owns one contiguous block of rows. The
    update is torch's formula term by term (Adam: betas 0.9/0.999, eps 1e-8, bias
    correction; SGD: ``buf = momentum·buf + grad``, dampening 0, no Nesterov).
    """

    def __init__(self, net: StackedParameters, kinds: Sequence[str], lr: Sequence[float],
                 weight_decay: Sequence[float], momentum: Sequence[float]) -> None:
        if list(kinds) != sorted(kinds):
            raise ValueError("models must be ordered by optimizer kind")
        self.net = net
        self.kinds = list(kinds)
        self.step_count = 0
        self.blocks = {kind: (kinds.index(kind), len(kinds) - kinds[::-1].index(kind))
                       for kind in set(kinds)}
        count = range(len(net.params))
        # Learning rates stay float64 until the step size is computed, as in torch.optim.
        self._lr = [self._per_row(lr, i, torch.float64) for i in count]
        self._neg_lr = [(-lr).float() for lr in self._lr]
        self._wd = [self._per_row(weight_decay, i) for i in count]
        self._decay = any(wd != 0 for wd in weight_decay)
        self._momentum = [self._per_row(momentum, i) for i in count]
        # Adam: first and second moments; SGD: the momentum buffer in the first slot.
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in net.params]
        # Per kind, its rows of every tensor the update touches (views: updated in place).
        self._views = {kind: self._rows_of(kind, {
            "param": net.params, "first": [m for m, _ in self.state],
            "second": [v for _, v in self.state], "lr": self._lr, "neg_lr": self._neg_lr,
            "momentum": self._momentum}) for kind in self.blocks}

    def _rows_of(self, kind: str, tensors: dict[str, list[torch.Tensor]]
                 ) -> dict[str, list[torch.Tensor]]:
        """The rows of ``kind``'s models in each tensor of each list of ``tensors``."""
        a, b = self.blocks[kind]
        return {name: [t[a * r:b * r] for t, r in zip(ts, self.net.rows)]
                for name, ts in tensors.items()}

    def _per_row(self, values: Sequence[float], i: int, dtype: torch.dtype = torch.float32
                 ) -> torch.Tensor:
        """Per-model ``values [K]`` repeated over each model's rows of parameter ``i``."""
        param, r = self.net.params[i], self.net.rows[i]
        rows = torch.tensor(values, dtype=dtype).repeat_interleave(r)
        return rows.view(-1, *[1] * (param.ndim - 1))

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One update of every model from its gradients (stacked like the parameters).

        Each operation runs over all parameters at once (``torch._foreach_*``: one call instead
        of one per tensor, the same kernels and so the same rounding), which halves the
        optimizer's share of a small network's step.
        """
        self.step_count += 1
        beta1, beta2 = ADAM_BETAS
        bias1 = 1 - beta1 ** self.step_count
        bias2_sqrt = (1 - beta2 ** self.step_count) ** 0.5
        grads = list(grads)
        if self._decay:
            grads = torch._foreach_add(torch._foreach_mul(self.net.params, self._wd), grads)
        for kind, views in self._views.items():
            p, m = views["param"], views["first"]
            g = grads if len(self.blocks) == 1 else self._rows_of(kind, {"g": grads})["g"]
            if kind == "adam":
                v = views["second"]
                torch._foreach_lerp_(m, g, 1 - beta1)
                torch._foreach_mul_(v, beta2)
                torch._foreach_addcmul_(v, g, g, value=1 - beta2)
                denom = torch._foreach_sqrt(v)
                torch._foreach_div_(denom, bias2_sqrt)
                torch._foreach_add_(denom, ADAM_EPS)
                step_size = [t.float() for t in torch._foreach_div(views["lr"], -bias1)]
                torch._foreach_addcdiv_(p, torch._foreach_mul(m, step_size), denom)
            else:
                torch._foreach_mul_(m, views["momentum"])
                torch._foreach_add_(m, g)
                torch._foreach_add_(p, torch._foreach_mul(m, views["neg_lr"]))

    # -- state in and out ----------------------------------------------------------------
    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """Each model's optimizer state: ``step`` and its moments (Adam) or buffer (SGD)."""
        out = []
        for k in range(self.net.k):
            state = {"step": torch.tensor(self.step_count, dtype=torch.int64)}
            for i, (first, second) in enumerate(self.state):
                r, key = self.net.rows[i], self.net.keys[k][i]
                if self.kinds[k] == "adam":
                    state[f"exp_avg.{key}"] = first[k * r:(k + 1) * r]
                    state[f"exp_avg_sq.{key}"] = second[k * r:(k + 1) * r]
                else:
                    state[f"momentum_buffer.{key}"] = first[k * r:(k + 1) * r]
            out.append({name: t.contiguous() for name, t in state.items()})
        return out

    def load_state_dicts(self, states: Sequence[dict[str, torch.Tensor]]) -> None:
        """Restore what :meth:`state_dicts` returned; every model must be at the same step."""
        steps = {int(s["step"]) if "step" in s else -1 for s in states}
        if len(steps) != 1 or -1 in steps:
            raise FormatError(f"optimizer states disagree on the step count: {sorted(steps)}")
        expected = [set(s) for s in self.state_dicts()]
        with torch.no_grad():
            for k, state in enumerate(states):
                if set(state) != expected[k]:
                    raise FormatError(f"optimizer state keys {sorted(state)} do not match the "
                                      f"expected {sorted(expected[k])}")
                for i, (first, second) in enumerate(self.state):
                    r, key = self.net.rows[i], self.net.keys[k][i]
                    rows = slice(k * r, (k + 1) * r)
                    names = ((f"exp_avg.{key}", first), (f"exp_avg_sq.{key}", second)) \
                        if self.kinds[k] == "adam" else ((f"momentum_buffer.{key}", first),)
                    for name, target in names:
                        value = state[name]
                        if value.shape != target[rows].shape or value.dtype != target.dtype:
                            raise FormatError(f"optimizer state {name}: expected "
                                              f"{tuple(target[rows].shape)}, got "
                                              f"{tuple(value.shape)} {value.dtype}")
                        target[rows].copy_(value)
        self.step_count = steps.pop()
