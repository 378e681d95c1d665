"""On-disk layout of a model zoo.

::

    ZOO/
      zoo.json                            manifest (written once, at creation)
      models/<id>/epoch_<EEE>.safetensors state dict after epoch E (0 = initialization)
      models/<id>/metrics.json            one row per finished epoch
      models/<id>/resume_<EEE>.safetensors optimizer state after epoch E (while training only)
      .sane-writer.lock                   held by the process writing the zoo (sane.locking)

The manifest holds the format version, the dataset, every model's id, seed, architecture and
training recipe, and the model-level train/validation/test split, fixed at creation. Progress
is what is on disk: epoch ``e`` of a model is recorded when its metrics row exists; the
checkpoint (and resume state) are written before that row, each atomically, so a job killed at
any point leaves a consistent zoo that a rerun continues. Trained zoos record every epoch;
imported zoos may hold checkpoints for only some epochs (a row says whether it has one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sane import atomic
from sane.checkpoints import read_state_dict
from sane.errors import FormatError
from sane.zoo.architectures import ArchConfig, state_layout

FORMAT = "sane-zoo"
VERSION = 1
MANIFEST = "zoo.json"
METRIC_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


@dataclass(frozen=True)
class ModelEntry:
    """One model of a zoo: ``training`` holds its recipe (optimizer, lr, batch size, epochs...)."""

    id: str
    seed: int
    architecture: ArchConfig
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "seed": self.seed, "architecture": self.architecture.to_dict(),
                "training": dict(self.training)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelEntry:
        return cls(id=str(d["id"]), seed=int(d["seed"]),
                   architecture=ArchConfig.from_dict(d["architecture"]),
                   training=dict(d.get("training", {})))


def make_split(
    ids: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[str]]:
    """Split model ids into train/val/test by a seeded shuffle of the sorted ids.

    Sizes are ``floor(f·N)`` for train and val, the rest for test (at least one model in each
    split when N >= 3). The result depends only on the set of ids, ``fractions`` and ``seed``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1):
        raise FormatError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        raise FormatError("model ids must be unique")
    n = len(ordered)
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(fractions[0] * n), int(fractions[1] * n)
    if n >= 3:  # keep every split non-empty when there are enough models
        n_val = max(n_val, 1) if fractions[1] > 0 else n_val
        n_train = min(max(n_train, 1), n - n_val - (fractions[2] > 0))
    shuffled = [ordered[i] for i in perm]
    return {"train": sorted(shuffled[:n_train]), "val": sorted(shuffled[n_train:n_train + n_val]),
            "test": sorted(shuffled[n_train + n_val:])}


class Zoo:
    """A zoo directory: read its manifest, checkpoints and metrics; write finished epochs."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.models = [ModelEntry.from_dict(m) for m in manifest["models"]]
        self._by_id = {m.id: m for m in self.models}

    # -- creation and opening -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        models: Iterable[ModelEntry],
        *,
        dataset: dict[str, Any],
        split: dict[str, list[str]] | None = None,
        split_seed: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> Zoo:
        """Write the manifest of a new zoo at ``path`` (which must not hold another zoo)."""
        path = Path(path)
        if (path / MANIFEST).exists():
            raise FormatError(f"{path / MANIFEST} already exists; open the zoo instead")
        models = list(models)
        ids = [m.id for m in models]
        split = split if split is not None else make_split(ids, seed=split_seed)
        manifest = {
            "format": FORMAT, "version": VERSION, "dataset": dict(dataset),
            "models": [m.to_dict() for m in models], "split": split, **(extra or {}),
        }
        _validate_manifest(manifest, path / MANIFEST)
        atomic.write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | Path) -> Zoo:
        """Open an existing zoo, validating its manifest."""
        path = Path(path)
        file = path / MANIFEST
        if not file.is_file():
            raise FormatError(f"{path} is not a zoo: {MANIFEST} not found")
        manifest = atomic.read_manifest(file, FORMAT, VERSION)
        _validate_manifest(manifest, file)
        return cls(path, manifest)

    def subset(self, model_ids: Iterable[str]) -> Zoo:
        """A view of this zoo holding only ``model_ids`` (in every split), for work on part
        of a zoo (one architecture of a mixed zoo); it reads the same files."""
        keep = set(model_ids)
        unknown = keep - set(self._by_id)
        if unknown:
            raise FormatError(f"{self.path}: no models {sorted(unknown)[:5]}")
        manifest = {**self.manifest,
                    "models": [m for m in self.manifest["models"] if m["id"] in keep],
                    "split": {s: [m for m in ids if m in keep]
                              for s, ids in self.manifest["split"].items()}}
        return Zoo(self.path, manifest)

    # -- queries --------------------------------------------------------------------------
    @property
    def dataset(self) -> dict[str, Any]:
        return self.manifest["dataset"]

    @property
    def split(self) -> dict[str, list[str]]:
        return self.manifest["split"]

    def model(self, model_id: str) -> ModelEntry:
        if model_id not in self._by_id:
            raise FormatError(f"{self.path}: no model {model_id!r}")
        return self._by_id[model_id]

    def model_dir(self, model_id: str) -> Path:
        return self.path / "models" / model_id

    def checkpoint_path(self, model_id: str, epoch: int) -> Path:
        return self.model_dir(model_id) / f"epoch_{epoch:03d}.safetensors"

    def metrics(self, model_id: str) -> list[dict[str, Any]]:
        """Rows of recorded epochs in increasing epoch order (empty when none is recorded).

        Each row has ``epoch``, ``checkpoint`` (whether a state dict is stored for it) and the
        metrics in :data:`METRIC_KEYS` plus ``ggap`` (``None`` where unknown).
        """
        file = self.model_dir(model_id) / "metrics.json"
        if not file.is_file():
            return []
        rows = atomic.read_json(file)
        if not isinstance(rows, list):
            raise FormatError(f"{file}: expected a list of rows")
        epochs = [r.get("epoch") if isinstance(r, dict) else None for r in rows]
        if not all(isinstance(e, int) for e in epochs) or epochs != sorted(set(epochs)):
            raise FormatError(f"{file}: expected rows with strictly increasing integer epochs")
        return rows

    def last_epoch(self, model_id: str) -> int | None:
        """The last recorded epoch of ``model_id`` (None when nothing is recorded)."""
        rows = self.metrics(model_id)
        return rows[-1]["epoch"] if rows else None

    def checkpoint_epochs(self, model_id: str) -> list[int]:
        """Epochs of ``model_id`` whose state dict is stored."""
        return [r["epoch"] for r in self.metrics(model_id) if r.get("checkpoint")]

    def load_checkpoint(self, model_id: str, epoch: int) -> dict[str, torch.Tensor]:
        """The state dict of ``model_id`` after ``epoch``, keys in the architecture's module
        order (safetensors files list them sorted), checked against the architecture's keys,
        shapes and dtypes (:func:`~sane.checkpoints.read_state_dict`: half precision is read
        as float32). Errors name the file."""
        file = self.checkpoint_path(model_id, epoch)
        if not file.is_file():
            raise FormatError(f"{file}: checkpoint not found (model {model_id}, epoch {epoch})")
        state = read_state_dict(file)
        layout = state_layout(self.model(model_id).architecture)
        keys = [k for k, _, _ in layout]
        if set(state) != set(keys):
            raise FormatError(f"{file}: keys do not match the architecture: missing "
                              f"{sorted(set(keys) - set(state))[:5]}, unexpected "
                              f"{sorted(set(state) - set(keys))[:5]}")
        for key, shape, dtype in layout:
            if tuple(state[key].shape) != shape or state[key].dtype != dtype:
                raise FormatError(f"{file}: {key!r} is {state[key].dtype} "
                                  f"{list(state[key].shape)}, the architecture has {dtype} "
                                  f"{list(shape)}")
        return {k: state[k] for k in keys}

    # -- writing --------------------------------------------------------------------------
    def write_epoch(
        self,
        model_id: str,
        epoch: int,
        state_dict: dict[str, torch.Tensor] | None,
        row: dict[str, Any],
    ) -> None:
        """Record an epoch: the checkpoint first (if any), then the metrics row (the commit).

        ``row`` holds the values of :data:`METRIC_KEYS` that are known; non-finite values are
        stored as ``None``; ``ggap = train_acc - test_acc`` is added when both are known.
        """
        rows = self.metrics(model_id)
        if rows and epoch <= rows[-1]["epoch"]:
            raise FormatError(
                f"model {model_id}: epoch {epoch} written after epoch {rows[-1]['epoch']}"
            )
        unknown = set(row) - set(METRIC_KEYS)
        if unknown:
            raise FormatError(f"model {model_id}: unknown metrics {sorted(unknown)}")
        values = {k: _finite_or_none(row.get(k)) for k in METRIC_KEYS}
        train_acc, test_acc = values["train_acc"], values["test_acc"]
        values["ggap"] = None if train_acc is None or test_acc is None else train_acc - test_acc
        if state_dict is not None:
            atomic.save_tensors(self.checkpoint_path(model_id, epoch), state_dict)
        full = {"epoch": epoch, "checkpoint": state_dict is not None, **values}
        atomic.write_json(self.model_dir(model_id) / "metrics.json", [*rows, full])

    # -- resume state (training only) -----------------------------------------------------
    def resume_path(self, model_id: str, epoch: int) -> Path:
        return self.model_dir(model_id) / f"resume_{epoch:03d}.safetensors"

    def save_resume_state(
        self, model_id: str, epoch: int, tensors: dict[str, torch.Tensor], kind: str
    ) -> None:
        """Save what training needs to continue after ``epoch`` besides the checkpoint.

        ``tensors`` is typically the optimizer state; ``kind`` names what it is (for example
        the optimizer) and is checked on loading. Write it before the epoch's metrics row.
        """
        atomic.save_tensors(self.resume_path(model_id, epoch), tensors, {"kind": kind})

    def load_resume_state(self, model_id: str, epoch: int, kind: str) -> dict[str, torch.Tensor]:
        """The tensors saved by :meth:`save_resume_state` for ``epoch``, checked to be ``kind``."""
        from safetensors import SafetensorError, safe_open

        file = self.resume_path(model_id, epoch)
        if not file.is_file():
            raise FormatError(f"{file}: resume state not found (model {model_id}, epoch "
                              f"{epoch}); without it training cannot continue this model")
        try:
            with safe_open(str(file), framework="pt") as f:
                stored = (f.metadata() or {}).get("kind")
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError) as error:
            raise FormatError(f"{file}: unreadable resume state ({error})") from error
        if stored != kind:
            raise FormatError(f"{file}: resume state is for {stored!r}, expected {kind!r}")
        return tensors

    def resume_epochs(self, model_id: str) -> list[int]:
        """Epochs of ``model_id`` that have a resume state on disk, in increasing order."""
        files = self.model_dir(model_id).glob("resume_*.safetensors")
        return sorted(int(f.name[7:-12]) for f in files if f.name[7:-12].isdigit())

    def remove_resume_state(self, model_id: str, keep: int | None = None) -> None:
        """Delete the resume states of ``model_id``, except the one of epoch ``keep``."""
        for epoch in self.resume_epochs(model_id):
            if epoch != keep:
                self.resume_path(model_id, epoch).unlink(missing_ok=True)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _validate_manifest(manifest: dict[str, Any], file: Path) -> None:
    for key in ("dataset", "models", "split"):
        if key not in manifest:
            raise FormatError(f"{file}: missing key {key!r}")
    try:
        ids = [ModelEntry.from_dict(m).id for m in manifest["models"]]
    except (KeyError, TypeError, ValueError) as error:
        raise FormatError(f"{file}: malformed model entry ({error})") from error
    if len(set(ids)) != len(ids):
        raise FormatError(f"{file}: duplicate model ids")
    split = manifest["split"]
    if set(split) != {"train", "val", "test"}:
        raise FormatError(f"{file}: split must have keys train, val, test")
    in_split = [i for part in split.values() for i in part]
    if sorted(in_split) != sorted(ids):
        raise FormatError(f"{file}: the split must list every model exactly once")
