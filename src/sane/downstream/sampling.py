"""The parts of sampling new models with SANE (Algorithm 3; the loop itself is
:meth:`sane.pipeline.Pipeline.sample_selected`): a KDE in latent space around a few prompt
models, batch-norm conditioning and scoring, and what a sampling run records. The best
samples by a cheap score are kept (*subsampling*), optionally over several rounds whose best
latents become the next prompts (*bootstrapping*), or starting from a Gaussian prior
instead of prompts.

A draw is one prompt's whole latent sequence plus Gaussian noise, independent per token and
latent dimension. Every token of a sample comes from the same prompt: a sample that takes each
token from another prompt is a patchwork of rows of different networks, and scores at chance
even with a perfect autoencoder (measured; the reference code's shared random state had the
same one-prompt-per-sample effect). The noise is relative by default: its standard deviation
is ``bandwidth`` times the prompts' *latent spread*, the standard deviation of each latent
dimension over all prompts and tokens, averaged over dimensions, so that one setting fits
SANEs whose latents have different scales (the reference code's fixed 0.2 exceeds the whole
spread of small SANEs' latents). The models returned are the best ones, sorted by score (the
reference returned the first models of the last bootstrapping draw, unsorted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sane.errors import ConfigError
from sane.model.sane import mean_latent_std
from sane.zoo.batchnorm import condition_batchnorm, has_batchnorm
from sane.zoo.layout import rename_positionally


@dataclass(frozen=True)
class SamplingConfig:
    """``samples`` models drawn per round, the ``keep`` best kept; ``rounds`` > 1 bootstraps;
    ``bandwidth`` the KDE's Gaussian kernel width in latent space, relative to the prompts'
    latent spread (:func:`latent_spread`) unless ``relative`` is False, then absolute;
    ``prior_std``, when set, replaces the prompts of the first round by latents drawn from
    N(0, prior_std²); ``bn_batches`` batches of conditioning data per sampled model
    (batch-norm models only)."""

    samples: int = 50
    keep: int = 10
    rounds: int = 1
    bandwidth: float = 0.1
    relative: bool = True
    prior_std: float | None = None
    bn_batches: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.keep <= self.samples:
            raise ConfigError(f"sampling keep must lie in [1, samples={self.samples}], got "
                              f"{self.keep}")
        if self.rounds < 1 or self.bn_batches < 1:
            raise ConfigError("sampling rounds and bn_batches must be positive")
        if self.bandwidth < 0 or (self.prior_std is not None and self.prior_std <= 0):
            raise ConfigError("sampling bandwidth must be >= 0 and prior_std > 0")


State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Scores:
    """A model's score on the split that selects (``selection``, e.g. validation accuracy)
    and on the split that is reported (``report``, e.g. test accuracy): what is chosen is
    chosen on the first, what is reported is measured on the second."""

    selection: float
    report: float


@dataclass(frozen=True)
class Target:
    """What sampled models are for: ``build(seed)`` a fresh model of the target architecture
    initialized from ``seed`` (sampled state dicts are loaded into ``build(0)`` by
    :func:`load_state`); ``select(model)`` the score that selects (higher is better, e.g.
    validation accuracy) and ``report(model)`` the score that is reported (e.g. test
    accuracy); ``images`` for batch-norm conditioning; ``fresh`` the places (in state-dict
    order) of entries taken from the freshly built model rather than decoded: a classifier for
    another number of classes than SANE was pretrained on is re-initialized."""

    build: Callable[[int], nn.Module]
    select: Callable[[nn.Module], float]
    report: Callable[[nn.Module], float]
    images: torch.Tensor
    fresh: tuple[int, ...] = ()


@dataclass(frozen=True)
class Draw:
    """One drawn model: its ``round`` (from 1), the index of the round's prompt it was drawn
    around (``source``: a prompt in round 1, a model kept by the previous round after it;
    None for a draw from the prior), its L2 ``distance`` in aligned weight space to that
    prompt's weights (None for the prior) and its ``scores``."""

    round: int
    source: int | None
    distance: float | None
    scores: Scores


@dataclass(frozen=True)
class Samples:
    """The ``keep`` best models of the last round by selection score, best first: ``states``,
    their ``scores`` and ``latents [keep, N, d_z]``; ``draws`` every draw of every round in
    order, ``kept[r]`` the indices into ``draws`` that round ``r + 1`` kept, best first;
    ``noise_std[r]`` the absolute noise standard deviation of round ``r + 1``."""

    states: list[State]
    scores: list[Scores]
    latents: torch.Tensor
    draws: list[Draw]
    kept: list[list[int]]
    noise_std: list[float]


def latent_spread(latents: torch.Tensor) -> float:
    """The standard deviation of each latent dimension over all sequences and tokens of
    ``latents [E, N, d_z]``, averaged over the dimensions
    (:func:`sane.model.sane.mean_latent_std`, as a number)."""
    return mean_latent_std(latents).item()


def kde_sample(prompts: torch.Tensor, count: int, noise_std: float,
               generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """``count`` draws from a Gaussian KDE over whole latent sequences: ``prompts
    [E, N, d_z]`` -> ``[count, N, d_z]`` and the prompt each draw was made around. Each draw
    is one prompt, chosen uniformly, plus noise of standard deviation ``noise_std``,
    independent per token and dimension."""
    source = torch.randint(0, prompts.shape[0], (count,), generator=generator)
    chosen = prompts[source]
    return chosen + noise_std * torch.randn(chosen.shape, generator=generator), source.tolist()


def flatten(state: State, keys: Sequence[str]) -> torch.Tensor:
    """The weights of ``keys`` in ``state`` as one float64 vector (aligned weight space)."""
    return torch.cat([state[k].detach().double().flatten() for k in keys])


def score_state(state: State, target: Target, bn_batches: int, generator: torch.Generator
                ) -> Scores:
    """The :class:`Scores` of the model holding ``state`` (``target.select`` and
    ``target.report``), its batch norm conditioned first on ``bn_batches`` batches of
    ``target.images`` (the conditioned statistics are written back into ``state``: they
    belong to the model)."""
    net = target.build(0)
    if target.fresh:
        keys, own = list(state), list(net.state_dict().values())
        for i in target.fresh:
            state[keys[i]] = own[i].detach().clone()
    net = load_state(net, state)
    if has_batchnorm(net):
        condition_batchnorm(net, target.images, batches=bn_batches, generator=generator)
        state.update(dict(zip(list(state), net.state_dict().values())))
    net.eval()
    return Scores(float(target.select(net)), float(target.report(net)))


def load_state(net: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """``net`` holding ``state``: by key, or position by position when ``state`` names the
    same layout otherwise (a zoo's canonical keys for a model whose dropout modules shift
    its own); returns ``net``."""
    own = net.state_dict()
    if set(own) != set(state):
        state = rename_positionally(state, [(k, tuple(t.shape)) for k, t in own.items()])
    net.load_state_dict(state)
    return net
