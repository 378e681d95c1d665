"""Sampling new models with SANE (Algorithm 3): per-token KDE in latent space around a few
prompt models, haloed decoding, batch-norm conditioning, and keeping the best by a cheap score
(*subsampling*), optionally over several rounds whose best latents become the next prompts
(*bootstrapping*), or starting from a Gaussian prior instead of prompts.

Two defects of the reference code are fixed here: every token's draw is independent (the
reference reused one random state per token, so all tokens of a sample picked the same
prompt and the same noise), and the models returned are the best ones, sorted by score (the
reference returned the first models of the last bootstrapping draw, unsorted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sane.downstream.batchnorm import condition_batchnorm, has_batchnorm
from sane.errors import ConfigError, FormatError
from sane.model import SANE
from sane.weights.manifest import TokenManifest
from sane.weights.standardize import Standardization
from sane.weights.tokenize import detokenize


@dataclass(frozen=True)
class SamplingConfig:
    """``samples`` models drawn per round, the ``keep`` best kept; ``rounds`` > 1 bootstraps;
    ``bandwidth`` the KDE's Gaussian kernel width in latent space; ``prior_std``, when set,
    replaces the prompts of the first round by latents drawn from N(0, prior_std²);
    ``bn_batches`` batches of conditioning data per sampled model (batch-norm models only)."""

    samples: int = 50
    keep: int = 10
    rounds: int = 1
    bandwidth: float = 0.2
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
    """What sampled models are for: ``build()`` a fresh model of the target architecture,
    ``score(model) -> float`` (higher is better, e.g. validation accuracy), ``images`` for
    batch-norm conditioning."""

    build: Callable[[], nn.Module]
    score: Callable[[nn.Module], float]
    images: torch.Tensor


@dataclass(frozen=True)
class Samples:
    """The ``keep`` best models of the last round, best first: ``states``, their ``scores``
    and ``latents [keep, N, d_z]``; ``rounds`` holds per-round score statistics."""

    states: list[dict[str, torch.Tensor]]
    scores: list[float]
    latents: torch.Tensor
    rounds: list[dict[str, float]]


def kde_sample(prompts: torch.Tensor, count: int, bandwidth: float,
               generator: torch.Generator) -> torch.Tensor:
    """``count`` draws from a Gaussian KDE per token position: ``prompts [E, N, d_z]`` ->
    ``[count, N, d_z]``. Every (sample, token) picks its own prompt and its own noise."""
    e, n, _ = prompts.shape
    source = torch.randint(0, e, (count, n), generator=generator)
    chosen = prompts[source, torch.arange(n)]
    return chosen + bandwidth * torch.randn(chosen.shape, generator=generator)


def sample_models(
    model: SANE,
    prompts: torch.Tensor | None,
    positions: torch.Tensor,
    manifest: TokenManifest,
    standardization: Standardization,
    target: Target,
    config: SamplingConfig = SamplingConfig(),
) -> Samples:
    """Sample models of the token layout ``manifest`` (positions ``[N, 3]``).

    ``prompts`` are standardized token sequences ``[E, N, d_t]`` of prompt models (None with
    ``config.prior_std``). Each round draws ``samples`` latent sequences, decodes them
    (haloed), de-standardizes, loads them into ``target.build()``, conditions batch norm on
    ``target.images`` and scores them; the ``keep`` best latents are the next round's prompts.
    """
    generator = torch.Generator().manual_seed(config.seed)
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
            bank = model.encode_sequence(prompts, positions)
        history = []
        for round_index in range(config.rounds):
            if bank is not None:
                latents = kde_sample(bank, config.samples, config.bandwidth, generator)
            # One sample at a time, keeping only the best states: memory stays at ``keep``
            # models however many are drawn (a ResNet-18 state is 45 MB).
            scores, kept = [], []
            for i in range(config.samples):
                tokens = model.decode_sequence(latents[i : i + 1], positions)[0]
                state = standardization.invert(detokenize(tokens, manifest))
                scores.append(_score(state, target, config, generator))
                kept = sorted([*kept, (-scores[i], i, state)], key=lambda k: k[:2])
                kept = kept[: config.keep]
            best = [i for _, i, _ in kept]
            history.append(_statistics(round_index + 1, scores, [scores[i] for i in best]))
            bank = latents[best]
    return Samples([state for _, _, state in kept], [scores[i] for i in best], latents[best],
                   history)


def _score(state: dict[str, torch.Tensor], target: Target, config: SamplingConfig,
           generator: torch.Generator) -> float:
    net = target.build()
    net.load_state_dict(state)
    if has_batchnorm(net):
        condition_batchnorm(net, target.images, batches=config.bn_batches, generator=generator)
        state.update(net.state_dict())  # the conditioned statistics belong to the sample
    return float(target.score(net.eval()))


def _statistics(round_index: int, scores: list[float], kept: list[float]) -> dict[str, float]:
    t, k = torch.tensor(scores), torch.tensor(kept)
    return {"round": round_index, "mean": t.mean().item(), "std": t.std().item() if len(t) > 1
            else 0.0, "best": t.max().item(), "kept_mean": k.mean().item()}
