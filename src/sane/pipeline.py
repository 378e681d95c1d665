"""A pretrained SANE as one portable object: load a run directory, then embed, reconstruct
or sample models of its architecture, with no zoo or token store present.

::

    pipe = sane.Pipeline.from_pretrained("runs/demo/sane")
    vectors = pipe.embed([net_a, net_b])         # [2, d_z] float64, one row per model
    z = pipe.latents([net_a])[0]                 # [N, d_z] per-token latents
    copy = pipe.decode(z[None], like=net_a)[0]   # = pipe.reconstruct(net_a)
    path = pipe.interpolate(net_a, net_b, [0.25, 0.5])  # models along the latent line
    new = pipe.sample([net_a, net_b], count=5)   # 5 new modules around the two prompts

It is the one path that encodes, embeds, decodes and samples: the stages (probes, sampling,
the OOD reference, the layer analysis) and the commands all go through it.

Models are ``nn.Module`` s or state dicts (under their own key names: a model whose dropout
modules shift its keys is renamed position by position) of an architecture whose parameters
fit the run's tokenizer (one of them, for a run on a mixed zoo); anything else is refused
with an error naming the first mismatch.
Each model is aligned to the zoo's reference (aligned runs), standardized and tokenized
(:class:`~sane.weights.tokenizer.Tokenizer`), then encoded whole through haloed windows.
Outputs take the form of the input: modules in, new modules out (copies of the first input,
so their activation and dropout are kept); state dicts in, state dicts under the same keys
out. Reconstructed and sampled models are in the reference's alignment (the same functions
as their permuted twins); entries kept out of the tokens (batch-norm statistics, unless the
store tokenized them) hold a fresh module's values: condition them on data with
:func:`sane.zoo.batchnorm.condition_batchnorm` before use.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sane.downstream.features import PERMUTATIONS, spread_features
from sane.downstream.sampling import (
    Draw,
    Samples,
    SamplingConfig,
    Target,
    flatten,
    kde_sample,
    latent_spread,
    score_state,
)
from sane.errors import ConfigError, FormatError
from sane.model import SANE
from sane.model.halo import Sequences
from sane.run import Run
from sane.weights.permutations import embedding_views
from sane.weights.tokenizer import Tokenizer
from sane.zoo.layout import rename_positionally

Model = nn.Module | Mapping[str, torch.Tensor]


class Pipeline:
    """``model`` a pretrained SANE and ``tokenizers`` those of its token store: one, or one
    per layout of a mixed zoo's store (each model is tokenized by the first that fits it).
    ``positions`` (one ``[N, 3]`` per tokenizer) are where the SANE sees each tokenizer's
    tokens; by default the tokenizer's own layout, and for an architecture the SANE was not
    pretrained on, its place within the pretrained layout
    (:func:`sane.weights.positions.relative_positions`)."""

    def __init__(self, model: SANE, tokenizers: Tokenizer | Sequence[Tokenizer], *,
                 positions: Sequence[torch.Tensor] | None = None) -> None:
        tokenizers = [tokenizers] if isinstance(tokenizers, Tokenizer) else list(tokenizers)
        if not tokenizers:
            raise FormatError("a pipeline needs at least one tokenizer")
        for tokenizer in tokenizers:
            if model.config.token_size != tokenizer.manifest.token_size:
                raise FormatError(f"the SANE takes tokens of {model.config.token_size} values, "
                                  f"a tokenizer makes {tokenizer.manifest.token_size}")
        if positions is None:
            positions = [t.manifest.positions() for t in tokenizers]
        if len(positions) != len(tokenizers) or any(
                tuple(p.shape) != (t.manifest.num_tokens, 3)
                for p, t in zip(positions, tokenizers)):
            raise FormatError("positions must be one [N, 3] per tokenizer, N its tokens")
        self.model = model.eval()
        self.tokenizers = tokenizers
        self.positions = list(positions)

    @classmethod
    def from_pretrained(cls, run: str | Path, *, device: str | torch.device = "cpu",
                        precision: str = "auto") -> Pipeline:
        """The SANE and tokenizer(s) saved in the run directory ``run`` (``sane pretrain``;
        a run on a mixed zoo's store keeps one tokenizer per layout in ``layouts/<k>``); the
        SANE computes on ``device`` in ``precision`` (``"auto"``: bf16 autocast on CUDA, fp32
        on CPU; :func:`sane.model.sane.inference_precision`)."""
        run = Run(run)
        return cls(run.model(device=device, precision=precision), run.tokenizers())

    def tokenizer(self, model: Model) -> Tokenizer:
        """The tokenizer that fits ``model`` (FormatError naming the first mismatch with the
        first tokenizer when none does)."""
        return self.tokenizers[self._fitting(model)]

    def _layouts(self, models: Sequence[Model]) -> dict[int, list[int]]:
        """``{tokenizer index: indices of the models it fits}``; errors name the model by its
        index."""
        if isinstance(models, (nn.Module, Mapping)) or not len(models):
            raise ConfigError("give a non-empty list of models (modules or state dicts)")
        groups: dict[int, list[int]] = {}
        for i, m in enumerate(models):
            try:
                groups.setdefault(self._fitting(m), []).append(i)
            except FormatError as error:
                raise FormatError(f"model {i}: {error}") from error
        return groups

    def _encode(self, k: int, states: list[dict[str, torch.Tensor]],
                permutation: dict[str, torch.Tensor] | None, *, tiled: bool = False
                ) -> list[torch.Tensor]:
        """Token latents ``[N, d_z]`` of aligned canonical ``states`` of layout ``k``, each
        permuted by ``permutation`` first: one haloed pass (``tiled``: one pass of windows
        side by side, without context around them, at half the cost), whose tokens are made
        span by span as the passes read them (never a model's whole sequence ``[N, d_t]``)."""
        tokenizer = self.tokenizers[k]
        readers = [tokenizer.reader(s, permutation=permutation, aligned=True) for s in states]
        tokens = _sequences(readers, tokenizer.manifest.num_tokens)
        window, halo = (self.model.config.window_size, 0) if tiled else (None, None)
        return list(self.model.encode_sequence(tokens, self.positions[k], window=window,
                                               halo=halo).cpu().float())

    def _fitting(self, model: Model) -> int:
        """The index of the first tokenizer that fits ``model``."""
        state = _state(model)
        errors = []
        for k, tokenizer in enumerate(self.tokenizers):
            try:
                tokenizer.canonical(state)
                return k
            except FormatError as error:
                errors.append(error)
        raise errors[0]

    @torch.no_grad()
    def latents(self, models: Sequence[Model], *, aligned: bool = False
                ) -> list[torch.Tensor]:
        """Per-token latents ``[N_i, d_z]`` of each of ``models``, encoded whole (haloed);
        ``aligned``: the models are already in the zoo's aligned frame (checkpoints of a
        token store), so no weight matching again. Errors name the model by its index."""
        out: list[torch.Tensor] = [torch.empty(0)] * len(models)
        for k, group in self._layouts(models).items():  # one haloed pass per layout
            states = self._aligned(k, [models[i] for i in group], aligned)
            for i, z in zip(group, self._encode(k, states, None)):
                out[i] = z
        return out

    def _aligned(self, k: int, models: Sequence[Model], aligned: bool
                 ) -> list[dict[str, torch.Tensor]]:
        """``models`` as canonical state dicts of layout ``k`` in the aligned frame."""
        tokenizer = self.tokenizers[k]
        align = tokenizer.canonical if aligned else tokenizer.aligned
        return [align(_state(m)) for m in models]

    def embed(self, models: Sequence[Model], *, spread: bool = False,
              permutations: int = PERMUTATIONS, seed: int = 0, aligned: bool = False,
              batch_size: int = 64) -> np.ndarray:
        """One vector per model, ``[B, d_z]`` float64: the mean of its token latents, averaged
        over the model as aligned and ``permutations`` random permutations of it (drawn from
        ``seed``, the same for every model: :func:`embedding_views`; none for an architecture
        without a permutation spec); with ``spread``, ``[B, 2·d_z]``: the mean, then the
        standard deviation of the token latents (:func:`spread_features`), each averaged.
        A view is encoded in windows side by side, without the haloing context of
        :meth:`latents` (half the cost, the same probe R²: docs/results.md, "Embedding
        views"). ``aligned`` as for :meth:`latents`; models are encoded ``batch_size`` at a
        time."""
        layouts = self._layouts(models)
        out = np.empty((len(models), self.model.config.d_latent * (2 if spread else 1)))
        for k, group in layouts.items():
            views = embedding_views(self.tokenizers[k].spec, permutations, seed)
            for start in range(0, len(group), batch_size):
                part = group[start : start + batch_size]
                states = self._aligned(k, [models[i] for i in part], aligned)
                total = torch.zeros(len(part), out.shape[1], dtype=torch.float64)
                with torch.no_grad():
                    for perm in views:
                        z = torch.stack(self._encode(k, states, perm, tiled=True))
                        total += (spread_features(z) if spread else z.mean(dim=1)).double()
                out[part] = (total / len(views)).numpy()
        return out

    def reconstruct(self, model: Model) -> Model:
        """``model`` encoded and decoded whole: a new model of the same form."""
        return self.decode(self.latents([model])[0][None], like=model)[0]

    def interpolate(self, a: Model, b: Model, ts: Sequence[float], *, aligned: bool = False
                    ) -> list[Model]:
        """Models decoded from ``(1 - t) · z_a + t · z_b`` for each ``t`` of ``ts``: the
        straight line between the latent sequences of ``a`` and ``b`` (two models of one
        architecture, each aligned to the zoo's reference first unless ``aligned`` says they
        are, so the line runs between aligned models); in the form of ``a``."""
        za, zb = self.latents([a, b], aligned=aligned)
        if za.shape != zb.shape:
            raise ConfigError("interpolate between two models of one architecture")
        t = torch.tensor([float(v) for v in ts]).view(-1, 1, 1)
        return self.decode((1 - t) * za + t * zb, like=a)

    def sample(self, prompts: Sequence[Model], count: int, *, bandwidth: float = 0.1,
               relative: bool = True, seed: int = 0) -> list[Model]:
        """``count`` new models drawn around ``prompts`` (of one architecture;
        :func:`kde_sample`): each is one prompt's latent sequence plus Gaussian noise of
        standard deviation ``bandwidth`` times the prompts' latent spread (``relative``) or
        ``bandwidth`` itself; decoded whole. The same ``seed`` gives the same models.
        Unscored and unselected: the ``sane sample`` command adds batch-norm conditioning,
        scoring and selection."""
        if count < 1 or bandwidth < 0:
            raise ConfigError(f"sampling needs count >= 1 and bandwidth >= 0, got {count} "
                              f"and {bandwidth}")
        latents = self.latents(prompts)
        if len({z.shape for z in latents}) != 1:
            raise ConfigError("sample around prompts of one architecture at a time")
        bank = torch.stack(latents)
        del latents  # views of the encoder's output: one copy of the latents is enough
        noise_std = bandwidth * (latent_spread(bank) if relative else 1.0)
        drawn, _ = kde_sample(bank, count, noise_std, torch.Generator().manual_seed(seed))
        del bank
        return self.decode(drawn, like=prompts[0])

    @torch.no_grad()
    def sample_selected(self, prompts: Sequence[Mapping[str, torch.Tensor]], target: Target,
                        config: SamplingConfig | None = None) -> Samples:
        """Algorithm 3: sampled models scored on ``target`` and selected by its selection
        score (:mod:`sane.downstream.sampling`).

        ``prompts`` are canonical state dicts of one architecture in the aligned frame (a
        token store's checkpoints; with ``config.prior_std`` only the first is used, for the
        architecture). Each round draws ``config.samples`` latent sequences around the
        round's prompts (:func:`kde_sample`; from N(0, prior_std²) in the first round with a
        prior), decodes them one at a time, loads each into ``target.build(0)``, conditions
        its batch norm and scores it on both splits (:func:`score_state`); the ``keep`` best
        by selection score are kept, and their latents are the next round's prompts. Memory
        stays at ``keep`` decoded models however many are drawn."""
        config = config or SamplingConfig()
        if not len(prompts):
            raise ConfigError("sampling needs at least one prompt (with a prior: one model "
                              "of the architecture)")
        like = prompts[0]
        layouts = self._layouts(prompts)
        if len(layouts) != 1:
            raise ConfigError("sample around prompts of one architecture at a time")
        manifest = self.tokenizers[next(iter(layouts))].manifest
        keys = manifest.tokenized_keys()
        generator = torch.Generator().manual_seed(config.seed)
        if config.prior_std is not None:
            n = manifest.num_tokens
            latents = config.prior_std * torch.randn(
                config.samples, n, self.model.config.d_latent, generator=generator)
            bank, sources = None, [None] * config.samples
        else:
            bank = torch.stack(self.latents(prompts, aligned=True))
            anchors = [flatten(p, keys) for p in prompts]
        draws: list[Draw] = []
        kept_per_round: list[list[int]] = []
        noise: list[float] = []
        for round_index in range(1, config.rounds + 1):
            noise_std = 0.0
            if bank is not None:
                noise_std = config.bandwidth * (latent_spread(bank) if config.relative else 1)
                latents, sources = kde_sample(bank, config.samples, noise_std, generator)
            first = len(draws)
            kept: list[tuple[float, int, dict[str, torch.Tensor]]] = []
            for i, source in enumerate(sources):
                state = self.decode(latents[i : i + 1], like=like)[0]
                distance = (None if source is None else
                            float(torch.linalg.vector_norm(flatten(state, keys) - anchors[source])))
                scores = score_state(state, target, config.bn_batches, generator)
                draws.append(Draw(round_index, source, distance, scores))
                kept = sorted([*kept, (-scores.selection, i, state)], key=lambda x: x[:2])
                kept = kept[: config.keep]
            best = [i for _, i, _ in kept]
            kept_per_round.append([first + i for i in best])
            noise.append(noise_std)
            bank = latents[best]
            anchors = [flatten(state, keys) for _, _, state in kept]
        return Samples([state for _, _, state in kept],
                       [draws[i].scores for i in kept_per_round[-1]], bank, draws,
                       kept_per_round, noise)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, like: Model) -> list[Model]:
        """Models decoded from latent sequences ``latents [B, N, d_z]`` of ``like``'s
        architecture, in the form of ``like`` (modules: copies of it holding the decoded
        weights; state dicts: under its keys), in the aligned frame."""
        if latents.ndim != 3:
            raise FormatError(f"latents must be [B, N, d_z], got {list(latents.shape)}")
        k = self._fitting(like)
        tokenizer = self.tokenizers[k]
        expected = (tokenizer.manifest.num_tokens, self.model.config.d_latent)
        if tuple(latents.shape[1:]) != expected:
            raise FormatError(f"latents of this architecture are [B, {expected[0]}, "
                              f"{expected[1]}], got {list(latents.shape)}")
        layout = [(key, tuple(t.shape)) for key, t in _state(like).items()]
        out: list[Model] = []
        # Decoded tokens go de-standardized into each model's tensors piece by piece (a new
        # module's own, for modules): neither the tokens of whole models [B, N, d_t] nor a
        # second copy of a model's weights is held.
        pieces = self.model.decode_pieces(latents, self.positions[k])
        for _, own_pieces in itertools.groupby(pieces, key=lambda piece: piece[0]):
            tokens = ((start, t.cpu()) for _, start, t in own_pieces)
            if isinstance(like, nn.Module):
                net = copy.deepcopy(like)
                # the module's own tensors (they share its storage) under canonical keys
                tokenizer.decode_pieces(tokens, out=tokenizer.canonical(net.state_dict()))
                out.append(net.eval())
            else:
                out.append(rename_positionally(tokenizer.decode_pieces(tokens), layout))
        return out


def _sequences(readers: list[Callable[[int, int], torch.Tensor]], length: int) -> Sequences:
    """Models of ``length`` tokens, read span by span by their ``readers``, as one haloing
    input."""
    return Sequences(len(readers), length, lambda i, start, stop: readers[i](start, stop))


def _state(model: Model) -> dict[str, torch.Tensor]:
    if isinstance(model, nn.Module):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if isinstance(model, Mapping):
        return dict(model)
    raise ConfigError(f"expected an nn.Module or a state dict, got {type(model).__name__}")
