"""Sampling new models with SANE (Algorithm 3): a KDE in latent space around a few prompt
models, haloed decoding, batch-norm conditioning, and keeping the best by a cheap score
(*subsampling*), optionally over several rounds whose best latents become the next prompts
(*bootstrapping*), or starting from a Gaussian prior instead of prompts.

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

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sane.errors import ConfigError, FormatError
from sane.model import SANE
from sane.weights.tokenizer import Tokenizer
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


@dataclass(frozen=True)
class Target:
    """What sampled models are for: ``build()`` a fresh model of the target architecture
    (sampled state dicts are loaded into it by :func:`load_state`),
    ``score(model) -> float`` (higher is better, e.g. validation accuracy), ``images`` for
    batch-norm conditioning; ``fresh`` the places (in state-dict order) of entries taken from
    the freshly built model rather than decoded: a classifier for another number of classes
    than SANE was pretrained on is re-initialized."""

    build: Callable[[], nn.Module]
    score: Callable[[nn.Module], float]
    images: torch.Tensor
    fresh: tuple[int, ...] = ()


@dataclass(frozen=True)
class Samples:
    """The ``keep`` best models of the last round, best first: ``states``, their ``scores``
    and ``latents [keep, N, d_z]``; ``rounds`` holds per-round score statistics and the
    absolute noise standard deviation used (``noise_std``)."""

    states: list[dict[str, torch.Tensor]]
    scores: list[float]
    latents: torch.Tensor
    rounds: list[dict[str, float]]


def latent_spread(latents: torch.Tensor) -> float:
    """The standard deviation of each latent dimension over all sequences and tokens of
    ``latents [E, N, d_z]``, averaged over the dimensions."""
    return latents.flatten(0, 1).std(dim=0, correction=0).mean().item()


def kde_sample(prompts: torch.Tensor, count: int, noise_std: float,
               generator: torch.Generator) -> torch.Tensor:
    """``count`` draws from a Gaussian KDE over whole latent sequences: ``prompts
    [E, N, d_z]`` -> ``[count, N, d_z]``. Each draw is one prompt, chosen uniformly, plus
    noise of standard deviation ``noise_std``, independent per token and dimension."""
    source = torch.randint(0, prompts.shape[0], (count,), generator=generator)
    chosen = prompts[source]
    return chosen + noise_std * torch.randn(chosen.shape, generator=generator)


def sample_models(
    model: SANE,
    prompts: torch.Tensor | None,
    positions: torch.Tensor,
    tokenizer: Tokenizer,
    target: Target,
    config: SamplingConfig = SamplingConfig(),
) -> Samples:
    """Sample models of ``tokenizer``'s token layout (positions ``[N, 3]``).

    ``prompts`` are standardized token sequences ``[E, N, d_t]`` of prompt models (None with
    ``config.prior_std``). Each round draws ``samples`` latent sequences, decodes them
    (haloed), de-standardizes, loads them into ``target.build()``, conditions batch norm on
    ``target.images`` and scores them; the ``keep`` best latents are the next round's prompts.
    """
    generator = torch.Generator().manual_seed(config.seed)
    manifest = tokenizer.manifest
    n = manifest.num_tokens
    if positions.shape != (n, 3):
        raise FormatError(f"positions must be [{n}, 3] for this token layout, got "
                          f"{list(positions.shape)}")
    model.eval()
    with torch.no_grad():
        if config.prior_std is not None:
            latents = config.prior_std * torch.randn(config.samples, n, model.config.d_latent,
                                                     generator=generator)
            bank = None
        elif prompts is None or prompts.ndim != 3 or prompts.shape[1:] != (n, manifest.token_size):
            raise FormatError(f"prompts must be [E, {n}, {manifest.token_size}] standardized "
                              "tokens (or set prior_std)")
        else:
            bank = model.encode_sequence(prompts, positions).cpu()
        history = []
        for round_index in range(config.rounds):
            noise_std = 0.0
            if bank is not None:
                noise_std = config.bandwidth * (latent_spread(bank) if config.relative else 1)
                latents = kde_sample(bank, config.samples, noise_std, generator)
            # One sample at a time, decoded piece by piece, keeping only the best states:
            # memory stays at ``keep`` models however many are drawn (a ResNet-18 state is
            # 45 MB).
            scores, kept = [], []
            for i in range(config.samples):
                pieces = model.decode_pieces(latents[i : i + 1], positions)
                state = tokenizer.decode_pieces((start, t.cpu()) for _, start, t in pieces)
                scores.append(score_state(state, target, config.bn_batches, generator))
                kept = sorted([*kept, (-scores[i], i, state)], key=lambda k: k[:2])
                kept = kept[: config.keep]
            best = [i for _, i, _ in kept]
            history.append(_statistics(round_index + 1, scores, [scores[i] for i in best])
                           | {"noise_std": noise_std})
            bank = latents[best]
    return Samples([state for _, _, state in kept], [scores[i] for i in best], latents[best],
                   history)


def score_state(state: dict[str, torch.Tensor], target: Target, bn_batches: int,
                generator: torch.Generator) -> float:
    """``target.score`` of the model holding ``state``, its batch norm conditioned first on
    ``bn_batches`` batches of ``target.images`` (the conditioned statistics are written back
    into ``state``: they belong to the model)."""
    net = target.build()
    if target.fresh:
        keys, own = list(state), list(net.state_dict().values())
        for i in target.fresh:
            state[keys[i]] = own[i].detach().clone()
    net = load_state(net, state)
    if has_batchnorm(net):
        condition_batchnorm(net, target.images, batches=bn_batches, generator=generator)
        state.update(dict(zip(list(state), net.state_dict().values())))
    return float(target.score(net.eval()))


def load_state(net: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """``net`` holding ``state``: by key, or position by position when ``state`` names the
    same layout otherwise (a zoo's canonical keys for a model whose dropout modules shift
    its own); returns ``net``."""
    own = net.state_dict()
    if set(own) != set(state):
        state = rename_positionally(state, [(k, tuple(t.shape)) for k, t in own.items()])
    net.load_state_dict(state)
    return net


def _statistics(round_index: int, scores: list[float], kept: list[float]) -> dict[str, float]:
    t, k = torch.tensor(scores), torch.tensor(kept)
    return {"round": round_index, "mean": t.mean().item(), "std": t.std().item() if len(t) > 1
            else 0.0, "best": t.max().item(), "kept_mean": k.mean().item()}
