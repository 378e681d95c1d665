"""Pretraining SANE on a token store (SANE Algorithm 1), resumable after any crash.

Every step draws, for a batch of training-split checkpoints, one random window each in two
views, each with its own multiplicative noise: the stored (aligned) model and, by default, a
randomly permuted copy of it (``permute``; without it both views are the aligned model, as in
the published configuration). The permuted view is the better default by function: on a
100-model seed zoo it lifted the decoded accuracy of held-out models from 0.85× to 0.97×
of their own at the same cost (recorded in the design notes; the configurations of that
measurement were not committed, so docs/results.md does not carry it).
The loss is ``(1 - gamma) · masked MSE + gamma · NT-Xent`` of the two views' projections;
each view is reconstructed from its own latents. AdamW (weight decay on matrices only) under a
one-cycle schedule stepped every batch, as in the published recipe.

The run directory (claimed, saved after every epoch, resumed, self-contained) is a
:class:`sane.run.Run`; its reports are :mod:`sane.train.report`. Under ``torchrun`` the
processes share every batch (:mod:`sane.train.distributed`).

Same store, config, seed and number of processes give the same weights bit for bit on CPU, and
a run resumed after an interruption ends with the weights of an uninterrupted run. Precision
``"auto"`` is decided once, by timing a few steps of each on a copy of the model (see
:func:`_resolve_precision`), and recorded: given that choice, the same holds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sane.errors import ConfigError, FormatError
from sane.locking import writer_lock
from sane.model.losses import nt_xent, squared_sums
from sane.model.sane import SANE, SANEConfig, describe, usable_device
from sane.run import Run
from sane.train.behaviour import BehaviourLoss
from sane.train.config import PretrainConfig, model_config
from sane.train.distributed import (
    Ranks,
    barrier,
    environment_ranks,
    from_main,
    gather_rows,
    process_group,
    total,
)
from sane.train.fidelity import reconstruction_report
from sane.train.report import write_reports
from sane.train.windows import WindowBatch, WindowConfig, WindowSampler
from sane.weights.store import StoreSet, TokenStore, open_store


@dataclass(frozen=True)
class PretrainResult:
    """What pretraining computed: the ``model`` after the last epoch (eval mode), the
    per-epoch ``history`` (as ``history.json``) and the run directory ``path``."""

    model: SANE
    history: list[dict[str, Any]]
    path: Path

    @property
    def fidelity(self) -> dict[str, Any]:
        """Reconstruction by function after the last epoch (:mod:`sane.train.fidelity`)."""
        return self.history[-1]["fidelity"]

    @property
    def seconds(self) -> float:
        """Training time summed over the epochs (resumed runs included)."""
        return sum(r["seconds"] for r in self.history)


def pretrain(
    store_path: str | Path, out: str | Path, config: PretrainConfig | None = None,
    *, progress: bool = True,
) -> PretrainResult:
    """Pretrain SANE on the token store at ``store_path`` (or the store set of a mixed zoo:
    windows are drawn across its layouts) into the run directory ``out``.

    Resumes from ``out`` when it holds an unfinished run with the same store, config and
    number of processes; a finished one is returned as is; another config raises
    :class:`ConfigError`, and a run directory another process is writing
    :class:`~sane.errors.BusyError` (:mod:`sane.locking`). Started by ``torchrun``, the
    processes train one model together (:mod:`sane.train.distributed`) and each returns it;
    rank 0 writes the run and holds its lock.
    """
    store, out = open_store(store_path), Path(out)
    stores = store.layouts
    config = PretrainConfig() if config is None else config
    shape = model_config(config, store)
    ranks = environment_ranks()
    ranks.check_batch(config.batch_size)
    device = _device(config.device, ranks)
    if config.permute and any(s.spec is None for s in stores):
        raise ConfigError(f"{store.path}: the architecture has no permutation spec, so the "
                          "second view cannot be permuted; set `permute = false` in the "
                          "pretraining config")
    windows = WindowConfig(
        window_size=shape.window_size, batch_size=config.batch_size, views=2,
        permute=config.permute, canonical_first=True, multiplicative_noise=config.noise,
        windows_per_checkpoint=config.windows_per_checkpoint
        or math.ceil(max(s.manifest.num_tokens for s in stores) / shape.window_size),
    )
    train = WindowSampler(store, "train", windows, seed=config.seed)
    if len(train) == 0:
        raise ConfigError(f"{store.path}: {len(train.rows)} training checkpoints × "
                          f"{windows.windows_per_checkpoint} windows make no full batch of "
                          f"{config.batch_size}; lower batch_size")
    # one writer per run directory: rank 0 writes for all ranks
    with process_group(ranks, device), writer_lock(out) if ranks.main else nullcontext():
        return _run(store, train, out, config, shape, device, ranks, progress=progress)


def _run(store: TokenStore | StoreSet, train: WindowSampler, out: Path, config: PretrainConfig,
         shape: SANEConfig, device: torch.device, ranks: Ranks, *, progress: bool
         ) -> PretrainResult:
    """The training of :func:`pretrain` in this process (one of ``ranks``)."""
    stores, run = store.layouts, Run(out)
    model = SANE(shape, seed=config.seed).to(device)
    config, measured = _resolve_precision(config, out, model, train, device, ranks)
    if ranks.main:
        if progress and measured is not None:
            print(f"precision auto: {config.precision} (a step took "
                  + ", ".join(f"{1e3 * t:.1f} ms in {p}" for p, t in measured.items()) + ")")
        record = run.new_record(store, config.to_dict(), shape.to_dict(), ranks.world_size)
        if measured is not None:
            record["auto_precision"] = {"seconds_per_step": measured, "chosen": config.precision}
        run.claim(record)
        run.save_tokenizers([s.tokenizer for s in stores])
    barrier(ranks)

    trained = model
    if ranks.distributed:
        trained = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * len(train), pct_start=0.3)
    history = run.resume(model, optimizer, scheduler)
    if ranks.main and history:  # a crash may have come between the state and the model
        model.save_pretrained(out)
        write_reports(out, history)
    progress = progress and ranks.main
    if progress and not history:
        print(describe(model))
    val = _validation_sampler(store, train.config, config.seed) if ranks.main else None
    behaviour = None
    if config.behaviour > 0:
        if ranks.distributed or not isinstance(store, TokenStore):
            raise ConfigError("the behavioural loss runs in one process on one token store")
        behaviour = BehaviourLoss(store, models=config.behaviour_models,
                                  images=config.behaviour_images)

    bar = tqdm(total=config.epochs * len(train), initial=len(history) * len(train),
               desc="pretraining", unit="step", disable=not progress)
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        # A private RNG per epoch and rank (dropout), so a resumed run draws what an
        # uninterrupted would.
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(config.seed * 1_000_003 + epoch + ranks.rank * 7_919)
            record = {"epoch": epoch, "lr": scheduler.get_last_lr()[0]}
            record |= _train_epoch(trained, train.epoch(epoch), optimizer, scheduler, config,
                                   device, ranks, bar, epoch, behaviour)
        if ranks.main:
            if val is not None:
                record |= _evaluate(model, val, config, device)
            record["seconds"] = time.perf_counter() - start
            record |= _whole_models(model, stores, config, final=epoch == config.epochs)
            run.save_epoch(model, optimizer, scheduler, [*history, record])
            write_reports(out, [*history, record])
        history.append(record)
        barrier(ranks)
    bar.close()
    return PretrainResult(model.eval(), history, out)


ONE_PROCESS = Ranks()
AUTO_STEPS = 5  # timed steps per precision when "auto" measures, after AUTO_WARMUP steps
AUTO_WARMUP = 2
BF16_SHARE = 0.9  # "auto" takes bf16 on a CPU where its step takes at most 0.9x fp32's


def _device(name: str, ranks: Ranks) -> torch.device:
    """The device of this process: ``name`` checked, ``cuda`` numbered by local rank."""
    return ranks.device(usable_device(name))


def _resolve_precision(config: PretrainConfig, out: Path, model: SANE, train: WindowSampler,
                       device: torch.device, ranks: Ranks
                       ) -> tuple[PretrainConfig, dict[str, float] | None]:
    """``config`` with precision ``"auto"`` resolved, and the seconds per step measured for
    it (None where nothing was measured). A run resumes in the precision ``run.json``
    records; on CUDA, ``auto`` is bf16 where the device supports it; on a CPU it is bf16 only
    where a step of this model on a batch of this store measures at most :data:`BF16_SHARE`
    of fp32's (:func:`_measure_precisions`; rank 0's measurement decides for all ranks), so
    that ``auto`` is never slower than fp32 by more than the timing's noise."""
    if config.precision != "auto":
        return config, None
    recorded = Run(out).recorded_precision()
    if recorded is not None:
        return dataclasses.replace(config, precision=recorded), None
    if device.type == "cuda":
        return dataclasses.replace(config, precision="bf16" if torch.cuda.is_bf16_supported()
                                   else "fp32"), None
    fp32, bf16 = from_main(torch.tensor(_measure_precisions(model, train, config, device,
                                                            ranks), dtype=torch.float64),
                           ranks).tolist()
    chosen = "bf16" if bf16 <= BF16_SHARE * fp32 else "fp32"
    return dataclasses.replace(config, precision=chosen), {"fp32": fp32, "bf16": bf16}


def _measure_precisions(model: SANE, train: WindowSampler, config: PretrainConfig,
                        device: torch.device, ranks: Ranks) -> tuple[float, float]:
    """Seconds of a training step in fp32 and under bf16 autocast: the fastest of
    :data:`AUTO_STEPS` steps each, after :data:`AUTO_WARMUP` each, the precisions taking turns
    (a change of load hits both). The steps train a copy of ``model`` on one batch of this
    rank's share of ``train``'s windows, inside a forked RNG: the run starts from the same
    weights and random state whatever is measured."""
    copy = deepcopy(model).train()
    optimizer = _optimizer(copy, config)
    rows = np.resize(train.rows, config.batch_size // ranks.world_size)
    batch = train.batch(rows, torch.Generator().manual_seed(config.seed))
    seconds = {"fp32": math.inf, "bf16": math.inf}
    with torch.random.fork_rng(devices=[]):
        for step in range(AUTO_WARMUP + AUTO_STEPS):
            for precision in seconds:
                elapsed = _timed_step(copy, optimizer, batch,
                                      dataclasses.replace(config, precision=precision), device)
                if step >= AUTO_WARMUP:
                    seconds[precision] = min(seconds[precision], elapsed)
    return seconds["fp32"], seconds["bf16"]


def _timed_step(model: SANE, optimizer: torch.optim.Optimizer, batch: WindowBatch,
                config: PretrainConfig, device: torch.device) -> float:
    """Seconds of one training step of ``model`` on ``batch`` in ``config.precision``."""
    start = time.perf_counter()
    to_backpropagate, _ = _step_loss(model, batch, config, device)
    optimizer.zero_grad(set_to_none=True)
    to_backpropagate.backward()
    optimizer.step()
    return time.perf_counter() - start


def _validation_sampler(store: TokenStore | StoreSet, windows: WindowConfig, seed: int
                        ) -> WindowSampler | None:
    """Fixed validation windows (epoch 0 of a seeded sampler, so every epoch sees the same),
    or None when the validation split has fewer than two checkpoints."""
    stores = store.layouts
    rows = sum(len(s.split_rows("val")) for s in stores)
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


def _step_loss(model: torch.nn.Module, batch: WindowBatch, config: PretrainConfig,
               device: torch.device, ranks: Ranks = ONE_PROCESS
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(to_backpropagate, losses)`` of one batch of two-view windows ``tokens [2, B, W, d_t]``
    of which this rank computes its share: the losses (detached) are the whole batch's;
    ``to_backpropagate`` is ``world_size`` times this rank's part of the whole batch's loss
    (its squared errors over all ranks' count of real values; NT-Xent over all ranks'
    projections, only its own carrying gradients), which the gradient averaging of
    distributed data parallel turns into the gradient of the whole batch's loss. For one
    process, both are the loss ``(1 - gamma) · masked MSE + gamma · NT-Xent``."""
    share = ranks.share(batch.tokens.shape[1])
    tokens = batch.tokens[:, share].to(device)
    views, b = tokens.shape[:2]
    positions = batch.positions[share].to(device).repeat(views, 1, 1)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        _, reconstruction, projection = model(tokens.flatten(0, 1), positions,
                                              config.latent_noise if model.training else 0.0)
    reconstruction = reconstruction.float().view_as(tokens)
    mask = batch.mask[share].to(device)
    errors = ((reconstruction - tokens) ** 2 * mask.expand_as(tokens)).sum()
    count = total(mask.expand_as(tokens).sum(), ranks)
    if count == 0:
        raise FormatError("the mask selects no real values")
    contrast = nt_xent(gather_rows(projection[:b].float(), ranks),
                       gather_rows(projection[b:].float(), ranks), config.temperature)
    reconstruction_loss = errors / count
    to_backpropagate = (1 - config.gamma) * reconstruction_loss + config.gamma * contrast
    if ranks.distributed:
        to_backpropagate = ranks.world_size * to_backpropagate
        reconstruction_loss = total(errors, ranks) / count
    losses = {"reconstruction": reconstruction_loss.detach(), "contrast": contrast.detach()}
    losses["loss"] = (1 - config.gamma) * losses["reconstruction"] + config.gamma * losses[
        "contrast"]
    # R² against the clean windows: what the model is meant to recover.
    sse, sst = squared_sums(reconstruction.detach(), batch.clean[:, share].to(device), mask)
    losses["sse"], losses["sst"] = total(sse, ranks), total(sst, ranks)
    return to_backpropagate, losses


# With the behavioural loss on, the gradient's norm is clipped to this: unclipped, the first
# behavioural run (weight 1, bf16) diverged at epoch 9 (issue 20, docs/results.md).
BEHAVIOUR_MAX_GRAD_NORM = 1.0


def _train_epoch(model: torch.nn.Module, batches: Any, optimizer: torch.optim.Optimizer,
                 scheduler: Any, config: PretrainConfig, device: torch.device, ranks: Ranks,
                 bar: tqdm, epoch: int, behaviour: BehaviourLoss | None = None
                 ) -> dict[str, float]:
    model.train()
    sums: dict[str, float] = {}
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    for step, batch in enumerate(batches, 1):
        to_backpropagate, losses = _step_loss(model, batch, config, device, ranks)
        if behaviour is not None:
            # In float32: at bf16 the first behavioural run diverged (issue 20).
            behaviour_loss = behaviour(model, generator)
            to_backpropagate = to_backpropagate + config.behaviour * behaviour_loss
            losses["behaviour"] = behaviour_loss.detach()
            losses["loss"] = losses["loss"] + config.behaviour * losses["behaviour"]
        if not torch.isfinite(losses["loss"]):
            raise FormatError(f"pretraining diverged: the loss is {losses['loss'].item()} at "
                              f"epoch {epoch}, step {step}; lower lr (now {config.lr})")
        optimizer.zero_grad(set_to_none=True)
        to_backpropagate.backward()
        if behaviour is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), BEHAVIOUR_MAX_GRAD_NORM)
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
        _accumulate(sums, _step_loss(model, batch, config, device)[1])
    return _means(sums, "val")


def _whole_models(model: SANE, stores: list[TokenStore], config: PretrainConfig, *,
                  final: bool) -> dict[str, Any]:
    """Whole-model R² of up to ``fidelity_models`` training and validation models; after the
    last epoch the full reconstruction-by-function report, with accuracy (``fidelity``). A
    store set gets one report per layout (``fidelity["layouts"]``, each naming its
    architecture) and the mean R² over its layouts per epoch."""
    reports = [reconstruction_report(model, s, limit=config.fidelity_models,
                                     with_accuracy=final) for s in stores]
    record: dict[str, Any] = {
        f"{split}_model_r2": sum(r[split]["r2"] for r in reports) / len(reports)
        for split in ("train", "val") if all(split in r for r in reports)}
    if not final:
        return record
    if len(reports) == 1:
        return record | {"fidelity": reports[0]}
    return record | {"fidelity": {"layouts": [
        {"architecture": s.architectures[0].name, **r} for s, r in zip(stores, reports)]}}


def _accumulate(sums: dict[str, float], losses: dict[str, torch.Tensor]) -> None:
    sums["steps"] = sums.get("steps", 0) + 1
    for key, value in losses.items():
        sums[key] = sums.get(key, 0.0) + value.item()


def _means(sums: dict[str, float], split: str) -> dict[str, float]:
    """Mean losses per step and the explained variance ``1 - sum(SSE) / sum(SST)``."""
    means = {f"{split}_{k}": sums[k] / sums["steps"]
             for k in ("loss", "reconstruction", "contrast", "behaviour") if k in sums}
    means[f"{split}_r2"] = 1 - sums["sse"] / max(sums["sst"], 1e-30)
    return means


