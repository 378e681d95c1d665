"""The pretraining run directory: claimed once for one store and config, saved atomically
after every epoch, resumed from the last finished epoch, and self-contained.

::

    RUN/
      .sane-writer.lock     held by the process writing the run (:mod:`sane.locking`)
      run.json              format, the resolved pretraining and model config, the store's
                            fingerprint, the number of processes ``world_size`` (a rerun must
                            match all of them) and, as provenance only, the store and its zoo
                            relative to RUN and, where precision "auto" was measured,
                            ``auto_precision``: seconds per step in fp32 and bf16, the choice
      training.safetensors  after every epoch: model, optimizer state; the metadata holds the
                            optimizer hyperparameters, schedule and history (one file, written
                            atomically, so a crash leaves the last finished epoch)
      sane.json, model.safetensors   the model after the last finished epoch
      tokenizer.json/.safetensors   the store's tokenizer with the alignment reference (a
                            store set's: one per layout, in layouts/<k>/)
      history.json, report.md, loss.png   :mod:`sane.train.report`

A run directory can be moved or copied: :class:`sane.pipeline.Pipeline` loads it with no store
or zoo present. Commands that need the store (probes, sampling from stored prompts) find it
through the relative path in ``run.json`` or take it as ``--store``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from sane import atomic
from sane.errors import ConfigError, FormatError
from sane.locking import is_lock_file
from sane.model.sane import SANE, load_checked
from sane.train.report import write_reports
from sane.weights.store import MANIFEST as STORE_MANIFEST
from sane.weights.store import TokenStore
from sane.weights.tokenizer import Tokenizer

FORMAT = "sane-pretrain-run"
VERSION = 2  # 2: store and zoo relative to the run, the store's fingerprint
RUN_FILE = "run.json"
STATE_FILE = "training.safetensors"


def store_fingerprint(store: TokenStore) -> str:
    """A short hash of the store's manifest: the same store wherever it lies."""
    return hashlib.sha256((store.path / STORE_MANIFEST).read_bytes()).hexdigest()[:16]


def run_record(out: Path, store: TokenStore, pretrain: dict[str, Any], model: dict[str, Any],
               world_size: int = 1) -> dict[str, Any]:
    """The content of ``run.json`` for a run in ``out`` on ``store`` by ``world_size``
    processes."""
    return {"format": FORMAT, "version": VERSION, "pretrain": pretrain, "model": model,
            "store_fingerprint": store_fingerprint(store), "world_size": world_size,
            "store": _relative(store.path, out), "zoo": _relative(store.zoo_path, out)}


def claim(out: Path, record: dict[str, Any]) -> None:
    """Write ``run.json`` in a new run directory, or check that an existing one was made with
    the same config, store and number of processes (the paths may differ: the run or the
    store may have moved)."""
    file = out / RUN_FILE
    if file.is_file():
        existing = atomic.read_manifest(file, FORMAT, VERSION)
        same = ("pretrain", "model", "store_fingerprint")
        if any(existing.get(k) != json.loads(json.dumps(record[k])) for k in same):
            raise ConfigError(f"{out} holds a run with another store or config (see {file}); "
                              "choose another --out or remove it")
        before = existing.get("world_size", 1)  # runs written before it was recorded: one
        if before != record["world_size"]:
            raise ConfigError(
                f"{out} was pretrained by {before} process(es) and cannot resume with "
                f"{record['world_size']}: each process computes its share of every batch, so "
                f"the weights depend on their number; resume with `torchrun --nproc-per-node "
                f"{before}`" + (" (or without torchrun)" if before == 1 else "")
                + " or choose another --out")
        return
    if out.exists() and any(not is_lock_file(p) for p in out.iterdir()):
        raise ConfigError(f"{out} exists and is not a pretraining run; choose another --out")
    atomic.write_json(file, record)


def recorded_precision(out: Path) -> str | None:
    """The precision, ``"fp32"`` or ``"bf16"``, that ``run.json`` in ``out`` records (None for
    a new run): a resumed run computes as it started."""
    if not (out / RUN_FILE).is_file():
        return None
    pretrain = atomic.read_manifest(out / RUN_FILE, FORMAT, VERSION).get("pretrain")
    precision = pretrain.get("precision") if isinstance(pretrain, dict) else None
    return precision if precision in ("fp32", "bf16") else None


def run_store(run: str | Path, store: str | Path | None = None) -> TokenStore:
    """``store`` when given, else the token store the pretraining run ``run`` was trained on
    (found relative to the run)."""
    if store is None:
        file = Path(run) / RUN_FILE
        if not file.is_file():
            raise FormatError(f"{run} is not a pretraining run: {RUN_FILE} not found "
                              "(give the token store with --store)")
        meta = atomic.read_manifest(file, FORMAT, VERSION)
        if not isinstance(meta.get("store"), str):
            raise FormatError(f"{file}: no store path")
        store = Path(run) / meta["store"]
        if not (store / STORE_MANIFEST).is_file():
            raise FormatError(f"{run}: its token store is not at {store} (the run or the store "
                              "moved?); give it with --store")
    return TokenStore.open(store)


def run_tokenizers(run: str | Path) -> list[Tokenizer]:
    """The tokenizer(s) saved in the run directory ``run``: its store's, or one per layout
    (``RUN/layouts/<k>``) for a run on a mixed zoo's store set."""
    run = Path(run)
    if (run / "layouts").is_dir():
        folders = sorted((d for d in (run / "layouts").iterdir() if d.is_dir()),
                         key=lambda d: int(d.name))
        return [Tokenizer.from_pretrained(d) for d in folders]
    return [Tokenizer.from_pretrained(run)]


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())


def save_epoch(out: Path, model: SANE, optimizer: torch.optim.Optimizer, scheduler: Any,
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
    write_reports(out, history)


def resume(out: Path, model: SANE, optimizer: torch.optim.Optimizer, scheduler: Any, *,
           write: bool = True) -> list[dict[str, Any]]:
    """Load the state of the last finished epoch into model, optimizer and schedule; returns
    the history so far (empty for a new run). With ``write``, rewrites the model and reports
    from that state (a crash may have come between them)."""
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
    if write:
        write_reports(out, history)
        model.save_pretrained(out)
    return history
