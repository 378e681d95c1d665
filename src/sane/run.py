"""A pretraining run: one directory, one owner. Every file of a run is written and read
through :class:`Run`; its layout is described here and nowhere else.

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
      tokenizer.json/.safetensors    the store's tokenizer with the alignment reference; a
                            store set's: one per layout, in layouts/<k>/
      history.json, report.md, loss.png   the pretraining report (:mod:`sane.train.report`)
      ood.json, ood-<space>.npy      the out-of-distribution reference
                            (:mod:`sane.downstream.ood`), fitted after pretraining

A run directory can be moved or copied: the model and tokenizers are all that embedding,
reconstructing and sampling new models need (:class:`sane.pipeline.Pipeline`). What needs the
token store (probes, sampling from stored prompts) finds it through the relative path in
``run.json`` or takes it as ``--store``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from sane import atomic
from sane.downstream.ood import OODReference
from sane.errors import ConfigError, FormatError
from sane.locking import is_lock_file
from sane.model.sane import SANE, load_checked
from sane.weights.store import MANIFEST as STORE_MANIFEST
from sane.weights.store import StoreSet, TokenStore, open_store
from sane.weights.tokenizer import Tokenizer

FORMAT = "sane-pretrain-run"
VERSION = 2  # 2: store and zoo relative to the run, the store's fingerprint
RUN_FILE = "run.json"
STATE_FILE = "training.safetensors"
LAYOUTS = "layouts"


def store_fingerprint(store: TokenStore | StoreSet) -> str:
    """A short hash of the store's manifest: the same store wherever it lies."""
    return hashlib.sha256((store.path / STORE_MANIFEST).read_bytes()).hexdigest()[:16]


class Run:
    """The pretraining run in the directory ``path`` (which may not exist yet)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # -- reading ------------------------------------------------------------------------

    @property
    def record(self) -> dict[str, Any]:
        """The content of ``run.json`` (FormatError when the directory holds no run)."""
        file = self.path / RUN_FILE
        if not file.is_file():
            raise FormatError(f"{self.path} is not a pretraining run: {RUN_FILE} not found")
        return atomic.read_manifest(file, FORMAT, VERSION)

    def model(self, *, device: str | torch.device = "cpu", precision: str = "auto") -> SANE:
        """The SANE after the last finished epoch (:meth:`SANE.from_pretrained`)."""
        return SANE.from_pretrained(self.path, device=device, precision=precision)

    def tokenizers(self) -> list[Tokenizer]:
        """The tokenizer of the run's store, or one per layout of a store set."""
        folders = self._tokenizer_folders()
        return [Tokenizer.from_pretrained(d) for d in folders]

    def store(self, store: str | Path | None = None) -> TokenStore:
        """``store`` when given, else the token store the run was trained on (found relative
        to the run); a store set (a mixed zoo) is refused with a message naming its layouts
        (:meth:`stores`)."""
        return TokenStore.open(self._store_path(store))

    def stores(self, store: str | Path | None = None) -> list[TokenStore]:
        """The layouts of ``store`` or of the run's store: one for a single store, one per
        layout of a store set."""
        return open_store(self._store_path(store)).layouts

    def _store_path(self, store: str | Path | None) -> Path:
        if store is not None:
            return Path(store)
        if not (self.path / RUN_FILE).is_file():
            raise FormatError(f"{self.path} is not a pretraining run: {RUN_FILE} not found "
                              "(give the token store with --store)")
        meta = self.record
        if not isinstance(meta.get("store"), str):
            raise FormatError(f"{self.path / RUN_FILE}: no store path")
        path = self.path / meta["store"]
        if not (path / STORE_MANIFEST).is_file():
            raise FormatError(f"{self.path}: its token store is not at {path} (the run or the "
                              "store moved?); give it with --store")
        return path

    def ood(self) -> OODReference | None:
        """The out-of-distribution reference, or None when the run has none yet."""
        return OODReference.load(self.path)

    def recorded_precision(self) -> str | None:
        """The precision, ``"fp32"`` or ``"bf16"``, the run records (None for a new run): a
        resumed run computes as it started."""
        if not (self.path / RUN_FILE).is_file():
            return None
        pretrain = self.record.get("pretrain")
        precision = pretrain.get("precision") if isinstance(pretrain, dict) else None
        return precision if precision in ("fp32", "bf16") else None

    # -- writing ------------------------------------------------------------------------

    def new_record(self, store: TokenStore | StoreSet, pretrain: dict[str, Any],
                   model: dict[str, Any], world_size: int = 1) -> dict[str, Any]:
        """The content of ``run.json`` for this run on ``store`` by ``world_size``
        processes."""
        return {"format": FORMAT, "version": VERSION, "pretrain": pretrain, "model": model,
                "store_fingerprint": store_fingerprint(store), "world_size": world_size,
                "store": _relative(store.path, self.path),
                "zoo": _relative(store.zoo_path, self.path)}

    def claim(self, record: dict[str, Any]) -> None:
        """Write ``run.json`` in a new run directory, or check that an existing one was made
        with the same config, store and number of processes (the paths may differ: the run
        or the store may have moved)."""
        file = self.path / RUN_FILE
        if file.is_file():
            existing = self.record
            same = ("pretrain", "model", "store_fingerprint")
            if any(existing.get(k) != json.loads(json.dumps(record[k])) for k in same):
                raise ConfigError(f"{self.path} holds a run with another store or config (see "
                                  f"{file}); choose another --out or remove it")
            before = existing.get("world_size", 1)  # runs written before it was recorded: one
            if before != record["world_size"]:
                raise ConfigError(
                    f"{self.path} was pretrained by {before} process(es) and cannot resume "
                    f"with {record['world_size']}: each process computes its share of every "
                    f"batch, so the weights depend on their number; resume with `torchrun "
                    f"--nproc-per-node {before}`" + (" (or without torchrun)" if before == 1
                                                      else "")
                    + " or choose another --out")
            return
        if self.path.exists() and any(not is_lock_file(p) for p in self.path.iterdir()):
            raise ConfigError(f"{self.path} exists and is not a pretraining run; choose another "
                              "--out")
        atomic.write_json(file, record)

    def save_tokenizers(self, tokenizers: list[Tokenizer]) -> None:
        """The store's tokenizer(s), so that the run embeds new models without its store."""
        if len(tokenizers) == 1:
            tokenizers[0].save_pretrained(self.path)
            return
        for k, tokenizer in enumerate(tokenizers):
            tokenizer.save_pretrained(self.path / LAYOUTS / str(k))

    def save_epoch(self, model: SANE, optimizer: torch.optim.Optimizer, scheduler: Any,
                   history: list[dict[str, Any]]) -> None:
        """The training state of a finished epoch in one atomic file, then the model."""
        optim = optimizer.state_dict()
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        for index, state in optim["state"].items():
            tensors |= {f"optimizer.{index}.{k}": v for k, v in state.items()}
        meta = {"param_groups": optim["param_groups"], "scheduler": scheduler.state_dict(),
                "history": history}
        atomic.save_tensors(self.path / STATE_FILE, tensors, {"state": json.dumps(meta)})
        model.save_pretrained(self.path)

    def resume(self, model: SANE, optimizer: torch.optim.Optimizer, scheduler: Any
               ) -> list[dict[str, Any]]:
        """Load the state of the last finished epoch into model, optimizer and schedule;
        returns the history so far (empty for a new run)."""
        from safetensors import SafetensorError, safe_open

        file = self.path / STATE_FILE
        if not file.is_file():
            return []
        try:
            with safe_open(str(file), framework="pt") as f:
                meta = json.loads(f.metadata()["state"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, SafetensorError, KeyError, TypeError, json.JSONDecodeError) as error:
            raise FormatError(f"{file}: unreadable training state ({error}); remove it to "
                              "start over") from error
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
            return list(meta["history"])
        except (KeyError, ValueError, TypeError) as error:
            raise FormatError(f"{file}: training state does not fit this run ({error})"
                              ) from error

    def save_ood(self, reference: OODReference) -> None:
        """The out-of-distribution reference of the run."""
        reference.save(self.path)

    def _tokenizer_folders(self) -> list[Path]:
        layouts = self.path / LAYOUTS
        if layouts.is_dir():
            return sorted((d for d in layouts.iterdir() if d.is_dir()), key=lambda d: int(d.name))
        return [self.path]


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())
