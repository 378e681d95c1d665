"""Pretraining SANE on a token store (SANE Algorithm 1), resumable after any crash.

Every step draws, for a batch of training-split checkpoints, one random window each in two
views, each with its own multiplicative noise: the stored (aligned) model and, by default, a
randomly permuted copy of it (``permute``; without it both views are the aligned model, as in
the published configuration). The permuted view is the better default by function: on a
100-model seed zoo it lifted the decoded accuracy of held-out models from 0.85× to 0.97×
of their own at the same cost (see the README).
The loss is ``(1 - gamma) · masked MSE + gamma · NT-Xent`` of the two views' projections;
each view is reconstructed from its own latents. AdamW (weight decay on matrices only) under a
one-cycle schedule stepped every batch, as in the published recipe.

::

    RUN/
      run.json              store, resolved pretraining and model config (a rerun must match)
      training.safetensors  after every epoch: model, optimizer state; the metadata holds the
                            epoch, optimizer hyperparameters, schedule and history (one file,
                            written atomically, so a crash leaves the last finished epoch)
      sane.json, model.safetensors   the model after the last finished epoch
                            (``SANE.from_pretrained(RUN)``)
      tokenizer.json/.safetensors   the store's tokenizer with the alignment reference
                            (``Tokenizer.from_pretrained(RUN)``): new models are embedded
                            without the store
      history.json, report.md, loss.png   per-epoch losses, window R² (against the clean
                            windows) and whole-model R² on train and validation; after the
                            last epoch, reconstruction by function (:mod:`sane.train.fidelity`)

Same store, config and seed give the same weights bit for bit on CPU, and a run resumed after
an interruption ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sane import atomic
from sane.errors import ConfigError, FormatError
from sane.model.losses import sane_loss, squared_sums
from sane.model.sane import PRESETS, SANE, SANEConfig, describe, load_checked
from sane.settings import coerce, read_toml
from sane.train.fidelity import fidelity_markdown, reconstruction_report
from sane.train.windows import WindowBatch, WindowConfig, WindowSampler
from sane.weights.store import TokenStore
from sane.weights.tokenizer import CONFIG_FILE as TOKENIZER_FILE

FORMAT = "sane-pretrain-run"
VERSION = 1
RUN_FILE = "run.json"
STATE_FILE = "training.safetensors"


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
    ``windows_per_checkpoint`` (default ``ceil(tokens / window_size)``, about covering every
    model once per epoch) sets the epoch length. ``device`` is a torch device string.
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
    windows_per_checkpoint: int | None = None
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"
    fidelity_models: int = 16

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise ConfigError(f"pretrain {key} must be {expected}, got "
                                  f"{getattr(self, key)!r}")

        check(self.preset in PRESETS, "preset", f"one of {sorted(PRESETS)}")
        check(self.epochs >= 1, "epochs", "positive")
        check(self.batch_size >= 2, "batch_size", "at least 2 (the contrastive loss needs "
              "negatives)")
        check(self.lr > 0, "lr", "positive")
        check(self.weight_decay >= 0, "weight_decay", "non-negative")
        check(0 <= self.gamma <= 1, "gamma", "in [0, 1]")
        check(self.temperature > 0, "temperature", "positive")
        check(self.noise >= 0, "noise", "non-negative")
        check(self.windows_per_checkpoint is None or self.windows_per_checkpoint >= 1,
              "windows_per_checkpoint", "positive")
        check(self.precision in ("auto", "fp32", "bf16"), "precision",
              '"auto", "fp32" or "bf16"')
        check(self.fidelity_models >= 1, "fidelity_models", "positive")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model.items()}
        return d


_FIELD_TYPES: dict[str, Any] = {
    "preset": str, "epochs": int, "batch_size": int, "lr": float, "weight_decay": float,
    "gamma": float, "temperature": float, "noise": float, "permute": bool,
    "windows_per_checkpoint": ("optional", int), "seed": int, "device": str, "precision": str,
    "fidelity_models": int,
}


def load_pretrain_config(source: str | Path | None = None, **overrides: Any) -> PretrainConfig:
    """A config from a TOML file (top-level keys as in :class:`PretrainConfig`, a ``[model]``
    table of model overrides), or the defaults when ``source`` is None; then ``overrides``
    (None values are ignored)."""
    table: dict[str, Any] = {}
    where = "pretrain config"
    if source is not None:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: pretraining config file not found")
        table, where = read_toml(path), str(path)
    table.update({k: v for k, v in overrides.items() if v is not None})
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "model":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: [model]: expected a table of settings")
            values[key] = dict(value)
        elif key in _FIELD_TYPES:
            values[key] = coerce(value, _FIELD_TYPES[key], f"{where}: {key}")
        else:
            known = ", ".join(sorted([*_FIELD_TYPES, "model"]))
            raise ConfigError(f"{where}: unknown key {key!r}; known: {known}")
    return PretrainConfig(**values)


def run_store(run: str | Path, store: str | Path | None = None) -> TokenStore:
    """``store`` when given, else the token store the pretraining run ``run`` was trained on."""
    if store is None:
        file = Path(run) / RUN_FILE
        if not file.is_file():
            raise FormatError(f"{run} is not a pretraining run: {RUN_FILE} not found "
                              "(give the token store with --store)")
        meta = atomic.read_json(file)
        if not isinstance(meta, dict) or not isinstance(meta.get("store"), str):
            raise FormatError(f"{file}: no store path")
        store = meta["store"]
    return TokenStore.open(store)


def model_config(config: PretrainConfig, store: TokenStore) -> SANEConfig:
    """The preset's shape with ``config.model``'s overrides; token size and position ranges
    from ``store`` unless overridden."""
    positions = store.positions
    d = {"token_size": store.manifest.token_size,
         "max_positions": [int(positions[:, i].max()) + 1 for i in range(3)],
         **PRESETS[config.preset], **config.model}
    model = SANEConfig.from_dict(d, f"pretrain [model] (preset {config.preset!r})")
    if model.token_size != store.manifest.token_size:
        raise ConfigError(f"model token_size {model.token_size} differs from the store's "
                          f"{store.manifest.token_size}")
    needed = [int(positions[:, i].max()) + 1 for i in range(3)]
    if any(m < n for m, n in zip(model.max_positions, needed)):
        raise ConfigError(f"model max_positions {list(model.max_positions)} do not cover the "
                          f"store's positions (needs at least {needed})")
    if model.window_size > store.manifest.num_tokens:
        raise ConfigError(f"model window_size {model.window_size} exceeds the "
                          f"{store.manifest.num_tokens} tokens per model of {store.path}")
    return model


def pretrain(
    store_path: str | Path, out: str | Path, config: PretrainConfig = PretrainConfig(),
    *, progress: bool = True,
) -> SANE:
    """Pretrain SANE on the token store at ``store_path`` into the run directory ``out``.

    Resumes from ``out`` when it holds an unfinished run with the same store and config; a
    finished one is returned as is; another config raises :class:`ConfigError`. Returns the
    model after the last epoch, in eval mode.
    """
    store, out = TokenStore.open(store_path), Path(out)
    shape = model_config(config, store)
    device = _device(config.device)
    if config.precision == "auto":
        config = dataclasses.replace(config, precision="bf16" if bf16_hardware(device)
                                     else "fp32")
    if config.permute and store.spec is None:
        raise ConfigError(f"{store.path}: the architecture has no permutation spec, so the "
                          "second view cannot be permuted; set `permute = false` in the "
                          "pretraining config")
    windows = WindowConfig(
        window_size=shape.window_size, batch_size=config.batch_size, views=2,
        permute=config.permute, canonical_first=True, multiplicative_noise=config.noise,
        windows_per_checkpoint=config.windows_per_checkpoint
        or math.ceil(store.manifest.num_tokens / shape.window_size),
    )
    train = WindowSampler(store, "train", windows, seed=config.seed)
    if len(train) == 0:
        raise ConfigError(f"{store.path}: {len(train.rows)} training checkpoints × "
                          f"{windows.windows_per_checkpoint} windows make no full batch of "
                          f"{config.batch_size}; lower batch_size")
    val = _validation_sampler(store, windows, config.seed)
    _claim(out, {"format": FORMAT, "version": VERSION, "store": str(store.path.resolve()),
                 "pretrain": config.to_dict(), "model": shape.to_dict()})
    if not (out / TOKENIZER_FILE).is_file():  # the run embeds new models without its store
        try:
            store.tokenizer().save_pretrained(out)
        except FormatError as error:  # an aligned store whose zoo is gone: no reference
            warnings.warn(f"{out}: no tokenizer saved, so `sane embed` will not work with "
                          f"this run ({error})", stacklevel=2)

    model = SANE(shape, seed=config.seed).to(device)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * len(train), pct_start=0.3)
    history = _resume(out, model, optimizer, scheduler)
    if progress and not history:
        print(describe(model))

    bar = tqdm(total=config.epochs * len(train), initial=len(history) * len(train),
               desc="pretraining", unit="step", disable=not progress)
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        # A private RNG per epoch (dropout), so a resumed run draws what an uninterrupted would.
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(config.seed * 1_000_003 + epoch)
            record = {"epoch": epoch, "lr": scheduler.get_last_lr()[0]}
            record |= _train_epoch(model, train.epoch(epoch), optimizer, scheduler, config,
                                   device, bar, epoch)
        if val is not None:
            record |= _evaluate(model, val, config, device)
        record["seconds"] = time.perf_counter() - start
        record |= _whole_models(model, store, config, final=epoch == config.epochs)
        history.append(record)
        _save(out, model, optimizer, scheduler, history)
    bar.close()
    return model.eval()


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"pretrain device {name!r} is not a torch device ({error})") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"pretrain device {name!r}: this torch sees no CUDA device")
    return device


def bf16_hardware(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA device that supports it, or a
    CPU whose flags (Linux ``/proc/cpuinfo``) include AVX512-BF16 or AMX-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _claim(out: Path, run: dict[str, Any]) -> None:
    """Write ``run.json`` in a new run directory, or check that it matches an existing one."""
    file = out / RUN_FILE
    if file.is_file():
        existing = atomic.read_json(file)
        if existing != json.loads(json.dumps(run)):
            raise ConfigError(f"{out} holds a run with another store or config (see {file}); "
                              "choose another --out or remove it")
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a pretraining run; choose another --out")
    atomic.write_json(file, run)


def _validation_sampler(store: TokenStore, windows: WindowConfig, seed: int
                        ) -> WindowSampler | None:
    """Fixed validation windows (epoch 0 of a seeded sampler, so every epoch sees the same),
    or None when the validation split has fewer than two checkpoints."""
    rows = len(store.split_rows("val"))
    if rows < 2:
        return None
    config = dataclasses.replace(windows, batch_size=min(windows.batch_size, rows),
                                 windows_per_checkpoint=1)
    return WindowSampler(store, "val", config, seed=seed + 1)


def _optimizer(model: SANE, config: PretrainConfig) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": matrices, "weight_decay": config.weight_decay},
                              {"params": vectors, "weight_decay": 0.0}], lr=config.lr)


def _step_loss(model: SANE, batch: WindowBatch, config: PretrainConfig, device: torch.device
               ) -> dict[str, torch.Tensor]:
    """Losses of one batch of two-view windows: ``tokens [2, B, W, d_t]``."""
    tokens = batch.tokens.to(device)
    views, b = tokens.shape[:2]
    positions = batch.positions.to(device).repeat(views, 1, 1)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        _, reconstruction, projection = model(tokens.flatten(0, 1), positions)
    reconstruction = reconstruction.float().view_as(tokens)
    mask = batch.mask.to(device)
    losses = sane_loss(reconstruction, tokens, mask,
                       (projection[:b].float(), projection[b:].float()),
                       gamma=config.gamma, temperature=config.temperature)
    # R² against the clean windows: what the model is meant to recover.
    losses["sse"], losses["sst"] = squared_sums(reconstruction.detach(),
                                                batch.clean.to(device), mask)
    return losses


def _train_epoch(model: SANE, batches: Any, optimizer: torch.optim.Optimizer,
                 scheduler: Any, config: PretrainConfig, device: torch.device, bar: tqdm,
                 epoch: int) -> dict[str, float]:
    model.train()
    sums: dict[str, float] = {}
    for step, batch in enumerate(batches, 1):
        losses = _step_loss(model, batch, config, device)
        if not torch.isfinite(losses["loss"]):
            raise FormatError(f"pretraining diverged: the loss is {losses['loss'].item()} at "
                              f"epoch {epoch}, step {step}; lower lr (now {config.lr})")
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
        _accumulate(sums, losses)
        bar.update()
        bar.set_postfix(epoch=epoch, loss=f"{losses['loss'].item():.4f}")
    return _means(sums, "train")


@torch.no_grad()
def _evaluate(model: SANE, sampler: WindowSampler, config: PretrainConfig,
              device: torch.device) -> dict[str, float]:
    model.eval()
    sums: dict[str, float] = {}
    for batch in sampler.epoch(0):
        _accumulate(sums, _step_loss(model, batch, config, device))
    return _means(sums, "val")


def _whole_models(model: SANE, store: TokenStore, config: PretrainConfig, *, final: bool
                  ) -> dict[str, Any]:
    """Whole-model R² of up to ``fidelity_models`` training and validation models; after the
    last epoch the full reconstruction-by-function report, with accuracy (``fidelity``)."""
    report = reconstruction_report(model, store, limit=config.fidelity_models,
                                   with_accuracy=final)
    record: dict[str, Any] = {f"{split}_model_r2": report[split]["r2"]
                              for split in ("train", "val") if split in report}
    return record | ({"fidelity": report} if final else {})


def _accumulate(sums: dict[str, float], losses: dict[str, torch.Tensor]) -> None:
    sums["steps"] = sums.get("steps", 0) + 1
    for key, value in losses.items():
        sums[key] = sums.get(key, 0.0) + value.item()


def _means(sums: dict[str, float], split: str) -> dict[str, float]:
    """Mean losses per step and the explained variance ``1 - sum(SSE) / sum(SST)``."""
    means = {f"{split}_{k}": sums[k] / sums["steps"]
             for k in ("loss", "reconstruction", "contrast")}
    means[f"{split}_r2"] = 1 - sums["sse"] / max(sums["sst"], 1e-30)
    return means


def _save(out: Path, model: SANE, optimizer: torch.optim.Optimizer, scheduler: Any,
          history: list[dict[str, Any]]) -> None:
    """The training state of a finished epoch in one atomic file, then the model and the
    reports (which a rerun rewrites from the state if a crash came between)."""
    optim = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for index, state in optim["state"].items():
        tensors |= {f"optimizer.{index}.{k}": v for k, v in state.items()}
    meta = {"param_groups": optim["param_groups"], "scheduler": scheduler.state_dict(),
            "history": history}
    atomic.save_tensors(out / STATE_FILE, tensors, {"state": json.dumps(meta)})
    model.save_pretrained(out)
    _write_reports(out, history)


def _resume(out: Path, model: SANE, optimizer: torch.optim.Optimizer, scheduler: Any
            ) -> list[dict[str, Any]]:
    """Load the state of the last finished epoch into model, optimizer and schedule; returns
    the history so far (empty for a new run)."""
    from safetensors import SafetensorError, safe_open

    file = out / STATE_FILE
    if not file.is_file():
        return []
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise FormatError(f"{file}: unreadable training state ({error}); remove it to start "
                          "over") from error
    load_checked(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                 str(file))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        scheduler.load_state_dict(meta["scheduler"])
        history = list(meta["history"])
    except (KeyError, ValueError, TypeError) as error:
        raise FormatError(f"{file}: training state does not fit this run ({error})") from error
    _write_reports(out, history)
    model.save_pretrained(out)
    return history


def _write_reports(out: Path, history: list[dict[str, Any]]) -> None:
    atomic.write_json(out / "history.json", history)
    keys = ["epoch", "train_loss", "train_reconstruction", "train_contrast", "train_r2",
            "train_model_r2", "val_loss", "val_reconstruction", "val_contrast", "val_r2",
            "val_model_r2", "seconds"]
    keys = [k for k in keys if any(k in r for r in history)]
    lines = ["# SANE pretraining", "",
             "Window R² is measured against the clean (noise-free) windows; model R² over "
             "whole decoded models (haloed, noise-free).", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in history:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in keys) + " |")
    if "fidelity" in history[-1]:
        lines += ["", "## Reconstruction by function (after the last epoch)", "",
                  "Each model's last stored epoch, encoded and decoded whole.", "",
                  fidelity_markdown(history[-1]["fidelity"])]
    atomic.write_text(out / "report.md", "\n".join(lines) + "\n")
    _plot(out / "loss.png", history)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _plot(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss, r2) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [r["epoch"] for r in history]
    for split in ("train", "val"):
        if f"{split}_loss" in history[-1]:
            loss.plot(epochs, [r[f"{split}_loss"] for r in history], label=split)
            r2.plot(epochs, [r[f"{split}_r2"] for r in history], label=split)
    loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    r2.set(xlabel="epoch", ylabel="R²", title="reconstruction R²")
    for ax in (loss, r2):
        ax.legend()
    fig.tight_layout()
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
