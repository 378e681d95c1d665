"""How new is a generated model? Measures of a kept model against its prompts and against the
models SANE was trained on.

A sampler that returns its prompts plus a little noise scores as well as the prompts; these
measures say how close each kept model lies to what already existed:

- ``distance``: the L2 distance in aligned weight space (the tokenized weights,
  de-standardized, flattened) to its nearest prompt, beside ``prompt_distance``, the mean
  distance between two prompts;
- ``agreement``: the share of report inputs on which it and its nearest prompt predict the
  same class; ``error_overlap``: of the report inputs either of them gets wrong, the share
  both get wrong (Jaccard index of their error sets);
- ``nearest_training``: the distance to the nearest *training* model (same epoch as the
  prompts), beside ``training_distance``, the median distance from a training model to its
  nearest other training model: a sample closer to some training model than training models
  are to each other is a copy of it (Zeng et al. 2025's measure).

Whether the models are *better* than copies is the job of :mod:`sane.downstream.copies`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sane.downstream.sampling import State, flatten


@dataclass(frozen=True)
class Novelty:
    """One kept model against what existed (see the module docstring); ``nearest_prompt`` an
    index into the prompts; ``nearest_training`` None without training models."""

    nearest_prompt: int
    distance: float
    agreement: float
    error_overlap: float
    nearest_training: float | None


def predictions(net: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The class ``net`` (in eval mode) predicts for each input of ``x``: ``[len(x)]``."""
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[i : i + batch_size]).argmax(1)
                          for i in range(0, len(x), batch_size)])


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """The fraction of inputs ``x`` on which ``a`` and ``b`` predict the same class."""
    return (predictions(a, x) == predictions(b, x)).double().mean().item()


def error_overlap(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> float:
    """The Jaccard index of the inputs that predictions ``a`` and ``b`` get wrong (1 when
    neither gets any wrong)."""
    wrong_a, wrong_b = a != labels, b != labels
    union = int((wrong_a | wrong_b).sum())
    return 1.0 if union == 0 else int((wrong_a & wrong_b).sum()) / union


def novelty(states: Sequence[State], prompts: Sequence[State], keys: Sequence[str], *,
            load: Callable[[State], nn.Module], inputs: torch.Tensor, labels: torch.Tensor,
            training: Sequence[State] = ()) -> list[Novelty]:
    """:class:`Novelty` of each of ``states`` against ``prompts`` (state dicts in one aligned
    frame and key naming) and ``training`` models; ``keys`` the weights compared (the
    tokenized ones); ``load(state)`` builds a network holding ``state``; ``inputs`` and
    ``labels`` the report split on which predictions are compared."""
    flat = torch.stack([flatten(p, keys) for p in prompts])
    train = torch.stack([flatten(t, keys) for t in training]) if training else None
    cache: dict[int, torch.Tensor] = {}  # each prompt's predictions, computed once
    out = []
    for state in states:
        vector = flatten(state, keys)
        d = torch.linalg.vector_norm(flat - vector, dim=1)
        i = int(d.argmin())
        if i not in cache:
            cache[i] = predictions(load(prompts[i]), inputs)
        own = predictions(load(state), inputs)
        out.append(Novelty(
            i, float(d[i]), (own == cache[i]).double().mean().item(),
            error_overlap(own, cache[i], labels),
            None if train is None else float(torch.linalg.vector_norm(train - vector,
                                                                      dim=1).min())))
    return out


def prompt_distance(prompts: Sequence[State], keys: Sequence[str]) -> float | None:
    """The mean L2 distance between two distinct prompts (None for a single prompt)."""
    if len(prompts) < 2:
        return None
    flat = torch.stack([flatten(p, keys) for p in prompts])
    pairwise = torch.cdist(flat, flat)
    return float(pairwise[~torch.eye(len(prompts), dtype=torch.bool)].mean())


def training_distance(training: Sequence[State], keys: Sequence[str]) -> float | None:
    """The median distance from a training model to its nearest other training model (None
    with fewer than two)."""
    if len(training) < 2:
        return None
    flat = torch.stack([flatten(t, keys) for t in training])
    pairwise = torch.cdist(flat, flat)
    pairwise.fill_diagonal_(float("inf"))
    return float(pairwise.min(dim=1).values.median())
