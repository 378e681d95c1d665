"""How to pretrain SANE: :class:`PretrainConfig`, read from TOML or built in code, and the
model shape it resolves to for a token store (:func:`model_config`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sane.errors import ConfigError
from sane.model.sane import PRESETS, SANEConfig
from sane.settings import from_table, given, read_toml, require
from sane.weights.store import StoreSet, TokenStore


@dataclass(frozen=True)
class PretrainConfig:
    """How to pretrain.

    ``preset`` names the model shape (:data:`sane.model.PRESETS`) and ``model`` overrides its
    keys (``d_model``, ``window_size``, ``max_positions``...); token size and position ranges
    default to the store's. ``lr`` is the one-cycle peak learning rate (30 % warm-up, cosine
    decay, Adam's beta1 cycled 0.95 → 0.85 → 0.95), ``weight_decay`` AdamW's on matrices and
    embedding tables. ``gamma`` weighs the contrastive loss against reconstruction,
    ``temperature`` is NT-Xent's. ``noise`` is the multiplicative noise of both views;
    ``permute`` makes the second view a random permutation of the aligned model.
    ``latent_noise`` trains the decoder on noised latents: each window's latents get Gaussian
    noise of standard deviation ``u · latent_noise`` times the batch's latent spread (``u``
    uniform in [0, 1] per window; the spread as the sampler measures it,
    :func:`sane.downstream.sampling.latent_spread`) before decoding, so that the decoder
    learns to map a neighbourhood of a model's latents to that model; 0 (the default) is
    plain reconstruction. The contrastive projection sees the clean latents.
    ``behaviour`` weighs a behavioural loss added to each step (:mod:`sane.train.behaviour`:
    ``behaviour_models`` whole training models decoded and compared with their originals by
    their outputs on ``behaviour_images`` of the zoo's training images); 0 (the default)
    leaves it out. One process only, for stores of one architecture without batch norm; the
    behavioural loss is computed in float32 and, with it on, each step's gradient norm is
    clipped to 1.
    ``windows_per_checkpoint`` (default ``ceil(tokens / window_size)``, about covering every
    model once per epoch) sets the epoch length. ``device`` is a torch device string.
    ``precision`` is ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"``: bf16 on CUDA, and on a
    CPU whichever of the two a few timed steps at the start find faster
    (:mod:`sane.train.pretraining`); ``run.json`` records the choice, which a resume keeps.
    """

    preset: str = "cpu"
    model: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 3e-9
    gamma: float = 0.05
    temperature: float = 0.1
    noise: float = 0.1
    permute: bool = True
    latent_noise: float = 0.0
    behaviour: float = 0.0
    behaviour_models: int = 4
    behaviour_images: int = 64
    windows_per_checkpoint: int | None = None
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"
    fidelity_models: int = 16

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, expected: str) -> None:
            require(ok, key, expected, getattr(self, key))

        check(self.preset in PRESETS, "preset", f"one of {sorted(PRESETS)}")
        check(self.epochs >= 1, "epochs", "positive")
        check(self.batch_size >= 2, "batch_size", "at least 2 (the contrastive loss needs "
              "negatives)")
        check(self.lr > 0, "lr", "positive")
        check(self.weight_decay >= 0, "weight_decay", "non-negative")
        check(0 <= self.gamma <= 1, "gamma", "in [0, 1]")
        check(self.temperature > 0, "temperature", "positive")
        check(self.noise >= 0, "noise", "non-negative")
        check(self.latent_noise >= 0, "latent_noise", "non-negative")
        check(self.behaviour >= 0, "behaviour", "non-negative")
        check(self.behaviour_models >= 1, "behaviour_models", "positive")
        check(self.behaviour_images >= 1, "behaviour_images", "positive")
        check(self.windows_per_checkpoint is None or self.windows_per_checkpoint >= 1,
              "windows_per_checkpoint", "positive")
        check(self.precision in ("auto", "fp32", "bf16"), "precision",
              '"auto", "fp32" or "bf16"')
        check(self.fidelity_models >= 1, "fidelity_models", "positive")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model.items()}
        return d


def load_pretrain_config(source: str | Path | None = None, **overrides: Any) -> PretrainConfig:
    """A config from a TOML file (top-level keys as in :class:`PretrainConfig`, a ``[model]``
    table of model overrides), or the defaults when ``source`` is None; then ``overrides``
    (None values are ignored: they stand for the file's value or the default)."""
    table: dict[str, Any] = {}
    where = "pretrain config"
    if source is not None:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: pretraining config file not found")
        table, where = read_toml(path), str(path)
    return from_table(PretrainConfig, {**table, **given(**overrides)}, where)


def model_config(config: PretrainConfig, store: TokenStore | StoreSet) -> SANEConfig:
    """The preset's shape with ``config.model``'s overrides; token size and position ranges
    from ``store`` (every layout of a store set) unless overridden."""
    stores = store.layouts
    token_size = stores[0].manifest.token_size
    needed = [max(int(s.positions[:, i].max()) + 1 for s in stores) for i in range(3)]
    d = {"token_size": token_size, "max_positions": needed,
         **PRESETS[config.preset], **config.model}
    model = SANEConfig.from_dict(d, f"pretrain [model] (preset {config.preset!r})")
    if model.token_size != token_size:
        raise ConfigError(f"model token_size {model.token_size} differs from the store's "
                          f"{token_size}")
    if any(m < n for m, n in zip(model.max_positions, needed)):
        raise ConfigError(f"model max_positions {list(model.max_positions)} do not cover the "
                          f"store's positions (needs at least {needed})")
    shortest = min(s.manifest.num_tokens for s in stores)
    if model.window_size > shortest:
        raise ConfigError(f"model window_size {model.window_size} exceeds the {shortest} "
                          f"tokens per model of {store.path}")
    return model
