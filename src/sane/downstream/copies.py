"""Copy baselines of equal budget: what a user gets from the prompts without SANE.

A sampler is worth using only where its models beat copies of its prompts that anyone can
make, given the same budget and the same selection. Each baseline therefore *replays the
sampler's rounds in weight space*: for every draw of the sampler it makes one candidate from
its own bank (the prompts in round 1, the models it kept itself after that), around the same
source and at the same L2 distance as the draw, scores it the same way, and keeps as many by
the same selection score. So each baseline draws exactly the sampler's ``samples``
candidates per round and keeps its ``keep`` best, for as many rounds.

- ``noise``: the source plus isotropic Gaussian noise whose L2 norm is exactly the draw's
  distance;
- ``per-tensor noise``: noise whose standard deviation in each tensor is proportional to that
  tensor's scale (the standard deviation the tokenizer standardizes it by: the form the noise
  of a per-tensor standardizing tokenizer takes), rescaled to exactly the draw's distance;
  the stronger of the two (measured);
- ``averages``: the average of the source and another member of the bank, drawn at random
  (aligned prompts, so an average is a model; it needs two).

A draw from the prior (GAUSS) has no source: each baseline's candidate for it is a fresh
random initialization of the target instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sane.downstream.sampling import (
    Draw,
    Samples,
    SamplingConfig,
    Scores,
    State,
    Target,
    flatten,
    score_state,
)
from sane.weights.tokenizer import Tokenizer

COPIES = ("noise", "per-tensor noise", "averages")

# bank, source index, distance, generator -> a candidate state
Proposal = Callable[[list[State], int, float, torch.Generator], State]


@dataclass(frozen=True)
class CopyRun:
    """One baseline's replay of the sampler: its kept ``states`` and their ``scores`` (best
    first by selection score), every candidate as a :class:`Draw` (``distance``: to its own
    source) and per round the indices of ``draws`` it kept."""

    name: str
    states: list[State]
    scores: list[Scores]
    draws: list[Draw]
    kept: list[list[int]]


def copy_baselines(prompts: Sequence[State], samples: Samples, tokenizer: Tokenizer,
                   target: Target, config: SamplingConfig,
                   names: Sequence[str] = COPIES) -> dict[str, CopyRun]:
    """Each baseline of ``names`` (of :data:`COPIES`) replayed over the draws of ``samples``,
    made around ``prompts`` (state dicts in the aligned frame, canonical keys) and scored on
    ``target`` as the sampler scored its draws; a baseline that cannot be made (averages of
    fewer than two models) is left out."""
    keys = tokenizer.manifest.tokenized_keys()
    stats = tokenizer.standardization.stats
    scales = {k: stats[k].std if k in stats else 1.0 for k in keys}
    proposals: dict[str, Proposal] = {
        "noise": lambda bank, s, d, g: _noised(bank[s], {k: 1.0 for k in keys}, d, g),
        "per-tensor noise": lambda bank, s, d, g: _noised(bank[s], scales, d, g),
        "averages": lambda bank, s, d, g: _average(bank, s, keys, g),
    }
    runs = {}
    for offset, name in enumerate(names):
        run = _replay(name, proposals[name], list(prompts), samples, tokenizer, target,
                      config, torch.Generator().manual_seed(config.seed * len(COPIES) + offset))
        if run is not None:
            runs[name] = run
    return runs


def _replay(name: str, propose: Proposal, prompts: list[State], samples: Samples,
            tokenizer: Tokenizer, target: Target, config: SamplingConfig,
            generator: torch.Generator) -> CopyRun | None:
    keys = tokenizer.manifest.tokenized_keys()
    bank = prompts
    draws: list[Draw] = []
    kept_per_round: list[list[int]] = []
    for round_index in range(1, len(samples.kept) + 1):
        if name == "averages" and len(bank) < 2:
            return None
        first = len(draws)
        kept: list[tuple[float, int, State]] = []
        for i, draw in enumerate(d for d in samples.draws if d.round == round_index):
            if draw.source is None:
                seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
                state = tokenizer.canonical(target.build(seed).state_dict())
                distance = None
            else:
                state = propose(bank, draw.source, draw.distance or 0.0, generator)
                distance = float(torch.linalg.vector_norm(
                    flatten(state, keys) - flatten(bank[draw.source], keys)))
            scores = score_state(state, target, config.bn_batches, generator)
            draws.append(Draw(round_index, draw.source, distance, scores))
            kept = sorted([*kept, (-scores.selection, i, state)], key=lambda k: k[:2])
            kept = kept[: config.keep]
        kept_per_round.append([first + i for _, i, _ in kept])
        bank = [state for _, _, state in kept]
    return CopyRun(name, bank, [draws[i].scores for i in kept_per_round[-1]], draws,
                   kept_per_round)


def _noised(source: State, scales: dict[str, float], norm: float,
            generator: torch.Generator) -> State:
    """``source`` plus Gaussian noise over the keys of ``scales``, each tensor's standard
    deviation proportional to its scale, the whole noise rescaled to L2 norm ``norm``."""
    noise = {k: s * torch.randn(source[k].shape, generator=generator, dtype=torch.float64)
             for k, s in scales.items()}
    total = float(torch.sqrt(sum((n**2).sum() for n in noise.values())))
    factor = norm / total if total > 0 else 0.0
    out = {k: v.clone() for k, v in source.items()}
    for k, n in noise.items():
        out[k] = (out[k].double() + factor * n).to(out[k].dtype)
    return out


def _average(bank: list[State], source: int, keys: Sequence[str],
             generator: torch.Generator) -> State:
    """The average of ``bank[source]`` and another member of ``bank`` drawn at random."""
    other = int(torch.randint(0, len(bank) - 1, (), generator=generator))
    other += other >= source
    out = {k: v.clone() for k, v in bank[source].items()}
    for k in keys:
        out[k] = (bank[source][k] + bank[other][k]) / 2
    return out
