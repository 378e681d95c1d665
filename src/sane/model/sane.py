"""The SANE autoencoder: windows of weight tokens to per-token latents and back.

::

    tokens [B, W, d_t] --Linear--> + pos(n, l, k) --> encoder blocks --Linear--> z [B, W, d_z]
    z [B, W, d_z]      --Linear--> + pos(n, l, k) --> decoder blocks --Linear--> tokens [B, W, d_t]
    z [B, W, d_z] --flatten--> projection head --> [B, d_p]     (contrastive loss only)

The bottleneck is linear (SANE §2); encoder and decoder share the position embedding. The
projection head sees a whole training window flattened, so it takes windows of exactly
``window_size`` tokens; encoding and decoding take windows of any length up to the position
tables' range; :meth:`SANE.encode_sequence`, :meth:`SANE.decode_sequence` and
:meth:`SANE.embed` take whole models of any length through haloed windows
(:mod:`sane.model.halo`), reading tokens on demand (:class:`~sane.model.halo.Sequences`) and
streaming decoded tokens out (:meth:`SANE.decode_pieces`) so that a model's tokens need not be
held whole. A trained model is saved as ``sane.json`` (config) + ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sane import atomic
from sane.errors import ConfigError, FormatError
from sane.model.halo import Sequences, haloed, haloed_pieces
from sane.model.transformer import Block, PositionEmbedding
from sane.settings import from_table, require

FORMAT = "sane-model"
VERSION = 1
CONFIG_FILE = "sane.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class SANEConfig:
    """The autoencoder's shape.

    ``token_size`` ``d_t`` values per token; ``max_positions`` the exclusive bounds of the
    ``(n, l, k)`` positions it can embed; ``d_model`` the transformer width, ``n_heads``
    attention heads, ``n_layers`` blocks in the encoder and as many in the decoder;
    ``d_latent`` ``d_z`` the per-token latent size; ``window_size`` the tokens per training
    window (the projection head's input length); ``projection_dim`` the projection head's
    output size; ``dropout`` inside the blocks.
    """

    token_size: int
    max_positions: tuple[int, int, int]
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_latent: int = 16
    window_size: int = 16
    projection_dim: int = 30
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for key in ("token_size", "d_model", "n_heads", "n_layers", "d_latent", "window_size",
                    "projection_dim"):
            require(getattr(self, key) >= 1, key, "a positive integer", getattr(self, key))
        require(len(self.max_positions) == 3 and all(m >= 1 for m in self.max_positions),
                "max_positions", "three positive integers (n, l, k)", self.max_positions)
        require(self.d_model % self.n_heads == 0 and self.d_model % 2 == 0, "d_model",
                f"even and divisible by n_heads ({self.n_heads})", self.d_model)
        require(0 <= self.dropout < 1, "dropout", "in [0, 1)", self.dropout)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["max_positions"] = list(self.max_positions)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "model config") -> SANEConfig:
        """The config :meth:`to_dict` wrote (``token_size`` and ``max_positions`` required,
        other keys default); ConfigError naming ``where`` and the key of a bad value."""
        return from_table(cls, d, where)


# Shapes by name; token_size and max_positions come from the data. "cnn" and "resnet" are
# the published configurations for the CNN and ResNet-18 zoos (d_model 1024 / 2048, 8 + 8
# blocks, 128 latent dimensions, windows of 64 / 256 tokens); "tiny" trains in seconds on
# a CPU, for tests; "cpu" (the pretraining default) is sized for CNN zoos on a CPU, with a
# latent as wide as a CNN-s token (201 values), so that whole held-out models decode to
# working networks (measured: docs/results.md).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 64, "n_heads": 4, "n_layers": 2, "d_latent": 16, "window_size": 16},
    "cpu": {"d_model": 256, "n_heads": 8, "n_layers": 2, "d_latent": 256, "window_size": 16},
    "small": {"d_model": 256, "n_heads": 8, "n_layers": 4, "d_latent": 32, "window_size": 32},
    "cnn": {"d_model": 1024, "n_heads": 8, "n_layers": 8, "d_latent": 128, "window_size": 64},
    "resnet": {"d_model": 2048, "n_heads": 16, "n_layers": 8, "d_latent": 128,
               "window_size": 256},
}


class ProjectionHead(nn.Module):
    """``z [B, W, d_z]`` flattened to ``[B, W·d_z]`` -> two bias-free Linear + LayerNorm +
    ReLU layers -> ``[B, d_p]`` (the contrastive loss compares these)."""

    def __init__(self, window_size: int, d_latent: int, projection_dim: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.layers = nn.Sequential(
            nn.Linear(window_size * d_latent, projection_dim, bias=False),
            nn.LayerNorm(projection_dim), nn.ReLU(),
            nn.Linear(projection_dim, projection_dim, bias=False),
            nn.LayerNorm(projection_dim), nn.ReLU(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 3 or z.shape[1] != self.window_size:
            raise FormatError(f"the projection head takes windows of {self.window_size} tokens "
                              f"[B, {self.window_size}, d_z], got {list(z.shape)}")
        return self.layers(z.flatten(1))


PRECISIONS = ("auto", "fp32", "bf16")


def mean_latent_std(latents: torch.Tensor) -> torch.Tensor:
    """The standard deviation of each latent dimension of ``latents [..., d_z]`` over all
    other axes (sequences and tokens), averaged over the dimensions: a 0-dim float32 tensor,
    not differentiated. Latent-noise training and the sampler's bandwidth
    (:func:`sane.downstream.sampling.latent_spread`) are relative to it."""
    return latents.detach().flatten(0, -2).float().std(dim=0, correction=0).mean()


def inference_precision(precision: str, device: torch.device | str) -> str:
    """``"fp32"`` or ``"bf16"`` for whole-model encoding and decoding on ``device``: ``"auto"``
    is bf16 on a CUDA device that computes it, fp32 elsewhere (on CPU, bf16 would change the
    results for little speed)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                          f"{precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


class SANE(nn.Module):
    """Sequential autoencoder for neural embeddings (Schürholt, Mahoney & Borth, 2024).

    ``precision`` (``"fp32"``, or ``"bf16"`` for autocast) applies to the whole-model methods
    (:meth:`encode_sequence`, :meth:`decode_sequence`, :meth:`decode_pieces`, :meth:`embed`),
    which also move each batch of windows to the model's device; their outputs are float32
    on that device. Training sets its own autocast."""

    precision: str = "fp32"

    def __init__(self, config: SANEConfig, *, seed: int = 0) -> None:
        super().__init__()
        # torch's layers draw their default initialization from the global RNG: fork it so
        # that building a model leaves it alone, then initialize from a private generator.
        with torch.random.fork_rng(devices=[]):
            c = self.config = config
            self.token_embedding = nn.Linear(c.token_size, c.d_model)
            self.positions = PositionEmbedding(c.max_positions, c.d_model)
            self.encoder = nn.ModuleList(Block(c.d_model, c.n_heads, c.dropout)
                                         for _ in range(c.n_layers))
            self.to_latent = nn.Linear(c.d_model, c.d_latent)
            self.from_latent = nn.Linear(c.d_latent, c.d_model)
            self.decoder = nn.ModuleList(Block(c.d_model, c.n_heads, c.dropout)
                                         for _ in range(c.n_layers))
            self.to_tokens = nn.Linear(c.d_model, c.token_size)
            self.head = ProjectionHead(c.window_size, c.d_latent, c.projection_dim)
            self.dropout = nn.Dropout(c.dropout)
        self._initialize(torch.Generator().manual_seed(seed))

    def _initialize(self, generator: torch.Generator) -> None:
        """GPT-2 initialization from a private generator (the global RNG is untouched):
        weights N(0, 0.02), biases 0, residual output projections N(0, 0.02/sqrt(2·layers))."""
        residual_std = 0.02 / (2 * self.config.n_layers) ** 0.5
        for name, p in self.named_parameters():
            if p.ndim < 2:
                continue  # LayerNorm weights keep 1, biases are zeroed below
            std = residual_std if name.endswith("proj.weight") else 0.02
            nn.init.normal_(p, 0.0, std, generator=generator)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def _check(self, x: torch.Tensor, positions: torch.Tensor, width: int, what: str) -> None:
        if x.ndim != 3 or x.shape[-1] != width:
            raise FormatError(f"{what} must be [B, W, {width}], got {list(x.shape)}")
        if positions.shape[:2] != x.shape[:2]:
            raise FormatError(f"positions {list(positions.shape)} do not match {what} "
                              f"{list(x.shape)}")

    def encode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``tokens [B, W, d_t]``, ``positions [B, W, 3]`` -> latents ``z [B, W, d_z]``."""
        self._check(tokens, positions, self.config.token_size, "tokens")
        x = self.dropout(self.token_embedding(tokens) + self.positions(positions))
        for block in self.encoder:
            x = block(x)
        return self.to_latent(x)

    def decode(self, z: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``z [B, W, d_z]``, ``positions [B, W, 3]`` -> tokens ``[B, W, d_t]``."""
        self._check(z, positions, self.config.d_latent, "latents")
        x = self.dropout(self.from_latent(z) + self.positions(positions))
        for block in self.decoder:
            x = block(x)
        return self.to_tokens(x)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """``z [B, window_size, d_z]`` -> ``[B, projection_dim]``."""
        return self.head(z)

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, latent_noise: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z, reconstruction, projection)`` of a batch of training windows ``tokens
        [B, W, d_t]``; with ``latent_noise``, the reconstruction is decoded from ``z`` plus
        Gaussian noise of standard deviation ``u · latent_noise · spread`` (``u ~ U(0, 1)`` per
        window, ``spread`` the per-dimension standard deviation of ``z`` over the batch and
        its tokens, averaged, not differentiated)."""
        z = self.encode(tokens, positions)
        decoded_from = z
        if latent_noise > 0:
            spread = mean_latent_std(z)
            scale = latent_noise * spread * torch.rand(len(z), 1, 1, device=z.device)
            decoded_from = z + scale.to(z.dtype) * torch.randn_like(z)
        return z, self.decode(decoded_from, positions), self.project(z)

    def halo_defaults(self) -> tuple[int, int]:
        """``(window, halo)`` for whole sequences: spans as long as a training window, a
        quarter of it as context on each side (SANE's ResNet setting: 128 + 2·64 = 256)."""
        halo = self.config.window_size // 4
        return self.config.window_size - 2 * halo, halo

    def encode_sequence(
        self, tokens: torch.Tensor | Sequences, positions: torch.Tensor, *,
        window: int | None = None, halo: int | None = None, batch_size: int = 64,
    ) -> torch.Tensor:
        """Whole models ``tokens [B, N, d_t]`` (a tensor, or :class:`Sequences` read on
        demand) with their ``positions [N, 3]`` -> latents ``[B, N, d_z]``, through haloed
        windows (defaults: :meth:`halo_defaults`)."""
        window, halo = self._halo(window, halo)
        return haloed(self._windows(self.encode), tokens, positions, window=window, halo=halo,
                      batch_size=batch_size)

    def decode_sequence(
        self, z: torch.Tensor, positions: torch.Tensor, *, window: int | None = None,
        halo: int | None = None, batch_size: int = 64,
    ) -> torch.Tensor:
        """Latents of whole models ``z [B, N, d_z]`` -> tokens ``[B, N, d_t]``, haloed."""
        window, halo = self._halo(window, halo)
        return haloed(self._windows(self.decode), z, positions, window=window, halo=halo,
                      batch_size=batch_size)

    def decode_pieces(
        self, z: torch.Tensor, positions: torch.Tensor, *, window: int | None = None,
        halo: int | None = None, batch_size: int = 64,
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """:meth:`decode_sequence` streamed, so that the tokens of whole models are never
        held at once: yields ``(i, start, tokens [length, d_t])``, the decoded tokens
        ``[start, start + length)`` of model ``i``, model by model in order (views of their
        batch's output; :func:`sane.weights.token_ranges.detokenize_pieces` writes them into a
        state dict as they come)."""
        window, halo = self._halo(window, halo)
        return haloed_pieces(self._windows(self.decode), z, positions, window=window,
                             halo=halo, batch_size=batch_size)

    def embed(
        self, tokens: torch.Tensor | Sequences, positions: torch.Tensor, *,
        window: int | None = None, halo: int | None = None, batch_size: int = 64,
    ) -> torch.Tensor:
        """One vector per model: the mean of its per-token latents (SANE's "center of
        gravity"), ``tokens [B, N, d_t]`` (a tensor or :class:`Sequences`) -> ``[B, d_z]``."""
        return self.encode_sequence(tokens, positions, window=window, halo=halo,
                                    batch_size=batch_size).mean(dim=1)

    def _windows(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``fn`` (encode or decode) on batches of windows from any device: moved to the
        model's, under bfloat16 autocast when :attr:`precision` is ``"bf16"``, out in
        float32."""
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"SANE.precision must be fp32 or bf16, got {self.precision!r}")
        device = next(self.parameters()).device

        def run(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=self.precision == "bf16"):
                return fn(x.to(device), positions.to(device)).float()

        return run

    def _halo(self, window: int | None, halo: int | None) -> tuple[int, int]:
        default_window, default_halo = self.halo_defaults()
        return (default_window if window is None else window,
                default_halo if halo is None else halo)

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``path/sane.json`` and ``path/model.safetensors`` (atomically, weights
        first, so a complete config always names complete weights)."""
        path = Path(path)
        atomic.save_tensors(path / WEIGHTS_FILE, self.state_dict())
        atomic.write_json(path / CONFIG_FILE, {"format": FORMAT, "version": VERSION,
                                                "config": self.config.to_dict()})

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        precision: str = "auto") -> SANE:
        """The model saved in ``path`` (a directory written by :meth:`save_pretrained` or by
        ``sane pretrain``), in eval mode on ``device``, encoding and decoding whole models in
        ``precision`` (:func:`inference_precision`: ``"auto"`` is bf16 on CUDA, fp32 on
        CPU)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not config_file.is_file():
            raise FormatError(f"{path} holds no SANE model: {CONFIG_FILE} not found "
                              "(train one with `sane pretrain STORE --out DIR`)")
        meta = atomic.read_manifest(config_file, FORMAT, VERSION)
        model = cls(SANEConfig.from_dict(meta.get("config"), str(config_file)))
        try:
            state = load_file(str(weights_file))
        except (OSError, SafetensorError) as error:
            raise FormatError(f"{weights_file}: unreadable ({error})") from error
        load_checked(model, state, str(weights_file))
        model.precision = inference_precision(precision, usable_device(device))
        return model.to(device).eval()


def usable_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device this torch can use (ConfigError otherwise)."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"{name!r} is not a torch device ({error})") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: this torch sees no CUDA device (a CPU build, or "
                          "no GPU); use --device cpu")
    return device


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``module`` after checking keys, shapes, dtypes and finiteness."""
    expected = module.state_dict()
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise FormatError(f"{where}: keys do not match the model (missing {missing[:3]}, "
                          f"unexpected {extra[:3]})")
    for key, t in state.items():
        if t.shape != expected[key].shape or t.dtype != expected[key].dtype:
            raise FormatError(f"{where}: {key} is {t.dtype} {list(t.shape)}, expected "
                              f"{expected[key].dtype} {list(expected[key].shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise FormatError(f"{where}: {key} holds NaN or infinite values")
    module.load_state_dict(state)


def describe(model: SANE) -> str:
    """One line: the shape and parameter count of ``model``."""
    config, n = model.config, sum(p.numel() for p in model.parameters())
    return (f"SANE d_model {config.d_model}, {config.n_heads} heads, {config.n_layers}+"
            f"{config.n_layers} blocks, d_z {config.d_latent}, windows of {config.window_size} "
            f"tokens of {config.token_size}: {n:,} parameters; "
            f"positions {json.dumps(list(config.max_positions))}")
