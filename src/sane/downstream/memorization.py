"""Memorization controls for sampled models: are they more than copies of their prompts?

A sampler that returns its prompts plus a little noise scores as well as the prompts, and so
does one that averages aligned prompts; neither has learned anything. Every sampling report
therefore measures, for each kept sample, the L2 distance to its nearest prompt in aligned
weight space (the tokenized weights, de-standardized, flattened) and how often the two agree
on the predicted class, and scores two baselines the same way as the samples:

- ``noised prompts``: each kept sample's nearest prompt plus isotropic Gaussian weight noise
  of the same L2 norm as the sample's distance to it;
- ``prompt averages``: the averages of random pairs of distinct aligned prompts.

Subsampling keeps the best of many draws, so the baselines get the same selection: each of
their models is the best of ``candidates`` scored candidates (the sampler's draws per kept
model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Memorization:
    """Per kept sample: ``nearest`` prompt index, ``distance`` to it and prediction
    ``agreement`` with it; ``baselines`` the scores of each baseline's models by name;
    ``prompt_distance`` the mean L2 distance between distinct prompts (for scale)."""

    nearest: list[int]
    distance: list[float]
    agreement: list[float]
    baselines: dict[str, list[float]]
    prompt_distance: float | None

    def to_dict(self, sample_scores: Sequence[float]) -> dict[str, Any]:
        mean = _mean(sample_scores)
        return {
            "nearest_prompt": self.nearest, "distance": self.distance,
            "agreement": self.agreement, "prompt_distance": self.prompt_distance,
            "baselines": {name: {"scores": scores, "mean": _mean(scores),
                                 "samples_beat_it": None if not scores or mean is None
                                 else mean > _mean(scores)}
                          for name, scores in self.baselines.items()},
        }


def flatten(state: State, keys: Sequence[str]) -> torch.Tensor:
    """The weights of ``keys`` in ``state`` as one float64 vector."""
    return torch.cat([state[k].detach().double().flatten() for k in keys])


def predictions(net: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The class ``net`` (in eval mode) predicts for each input of ``x``: ``[len(x)]``."""
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[i : i + batch_size]).argmax(1)
                          for i in range(0, len(x), batch_size)])


def agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """The fraction of inputs ``x`` on which ``a`` and ``b`` predict the same class."""
    return (predictions(a, x) == predictions(b, x)).double().mean().item()


def memorization_controls(
    samples: Sequence[State], prompts: Sequence[State], keys: Sequence[str], *,
    load: Callable[[State], nn.Module], score: Callable[[State], float], inputs: torch.Tensor,
    candidates: int = 1, seed: int = 0,
) -> Memorization:
    """The controls for the kept ``samples`` against their ``prompts`` (state dicts in one
    aligned frame and key naming); ``keys`` the weights compared (the tokenized ones);
    ``load(state)`` builds a network holding ``state``, ``score(state)`` scores one the way
    the samples were scored; ``inputs`` the data on which predictions are compared; each
    baseline model is the best of ``candidates``."""
    generator = torch.Generator().manual_seed(seed)
    flat = torch.stack([flatten(p, keys) for p in prompts])
    nearest, distance, agree = [], [], []
    prompt_predictions: dict[int, torch.Tensor] = {}  # each prompt's, computed once
    for state in samples:
        d = torch.linalg.vector_norm(flat - flatten(state, keys), dim=1)
        i = int(d.argmin())
        nearest.append(i)
        distance.append(float(d[i]))
        if i not in prompt_predictions:
            prompt_predictions[i] = predictions(load(prompts[i]), inputs)
        agree.append((predictions(load(state), inputs) == prompt_predictions[i])
                     .double().mean().item())
    noised = [max(score(_noised(prompts[i], keys, dist, generator)) for _ in range(candidates))
              for i, dist in zip(nearest, distance)]
    pairs = _pairs(len(prompts), len(samples) * candidates, generator)
    averages = [max(score(_average(prompts[i], prompts[j], keys))
                    for i, j in pairs[k : k + candidates])
                for k in range(0, len(pairs), candidates)]
    pairwise = torch.cdist(flat, flat)
    off_diagonal = pairwise[~torch.eye(len(prompts), dtype=torch.bool)]
    return Memorization(
        nearest, distance, agree, {"noised prompts": noised, "prompt averages": averages},
        float(off_diagonal.mean()) if len(off_diagonal) else None,
    )


def _noised(prompt: State, keys: Sequence[str], norm: float, generator: torch.Generator
            ) -> State:
    """``prompt`` plus Gaussian noise over ``keys`` whose L2 norm is about ``norm``."""
    size = sum(prompt[k].numel() for k in keys)
    std = norm / size**0.5
    out = {k: v.clone() for k, v in prompt.items()}
    for k in keys:
        out[k] += (std * torch.randn(out[k].shape, generator=generator, dtype=torch.float64)
                   ).to(out[k].dtype)
    return out


def _average(a: State, b: State, keys: Sequence[str]) -> State:
    out = {k: v.clone() for k, v in a.items()}
    for k in keys:
        out[k] = (a[k] + b[k]) / 2
    return out


def _pairs(n: int, count: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """``count`` random pairs of distinct indices below ``n`` (repeating when there are fewer
    pairs); none for a single prompt."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if not pairs:
        return []
    order = torch.randperm(len(pairs), generator=generator).tolist()
    return [pairs[order[i % len(pairs)]] for i in range(count)]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
