"""The token store: every checkpoint of a zoo tokenized once, in one memory-mapped array.

::

    STORE/
      store.json            format, settings, the zoo (relative to the store), the distinct
                            architectures, one row per checkpoint (model, epoch, split, index
                            of its architecture), property names
      tokenizer.json/.safetensors   the tokenizer (:class:`~sane.weights.tokenizer.Tokenizer`:
                            token manifest, standardization, permutation spec, alignment
                            reference), the one source of all of them
      tokens.npy            float32 [M, N, d_t]: standardized (and aligned) tokens, row m =
                            checkpoint m; opened as a read-only memory map
      mask.npy              bool [N, d_t]: real values vs padding, shared by all checkpoints
      positions.npy         int64 [N, 3]: (n, l, k) per token, shared by all checkpoints
      properties.npy        float64 [M, P]: per checkpoint metrics (NaN where unknown)
      alignment.json/.safetensors   with ``align``: the reference and one permutation per model
      .sane-writer.lock     held by the process preparing the store (:mod:`sane.locking`)

A zoo of several parameter layouts (a *mixed* zoo: CNN-s beside a wider CNN-s) becomes a
:class:`StoreSet`: one complete store per layout under ``STORE/layouts/<k>`` (each aligned
within its architecture and standardized on its own training split), all with the same
token size (the largest any layout needs, unless ``token_size`` is set), and a
``store.json`` listing them. Pretraining draws windows across all of them.

Each checkpoint is stored exactly once. Windows, permutations and noise are produced on the fly
(:mod:`sane.weights.augment`, :mod:`sane.train.windows`) by index arithmetic.

Preparation order: (1) with ``align``, weight matching of every model to one reference (saved
first, and reused when a crashed run is repeated); (2) the tokenizer fitted on the zoo's
training split (:func:`~sane.weights.zoo_tokenizer.fit_zoo`) and saved; (3) tokens written into
``tokens.npy`` under a temporary name, then renamed; ``store.json`` is written last and marks
a complete store.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sane import atomic
from sane.errors import ConfigError, FormatError
from sane.locking import writer_lock
from sane.settings import from_table, require
from sane.weights.align import MANIFEST as ALIGNMENT_MANIFEST
from sane.weights.align import Alignment, align_zoo
from sane.weights.manifest import TokenManifest
from sane.weights.tokenize import make_manifest, tokenize_into
from sane.weights.tokenizer import Tokenizer
from sane.weights.zoo_tokenizer import fit_zoo
from sane.zoo.architectures import ArchConfig, build_model
from sane.zoo.layout import as_architecture, layout_groups
from sane.zoo.storage import Zoo

SET_FORMAT = "sane-token-store-set"
SET_VERSION = 1
FORMAT = "sane-token-store"
VERSION = 3  # 2: every row records its architecture; 3: the tokenizer saved beside the tokens
MANIFEST = "store.json"
PROPERTIES = ("test_acc", "val_acc", "train_acc", "ggap", "epoch", "test_loss", "val_loss",
              "train_loss")


class StoreSetError(FormatError):
    """A single-layout store was asked for where a store set lies."""


@dataclass(frozen=True)
class StoreSettings:
    """What ``sane prepare`` was asked for; a rerun with other settings is refused.

    ``max_abs`` leaves out checkpoints with a tokenized weight of magnitude above it
    (diverged models, whose scale would otherwise dominate the standardization); None keeps
    every finite checkpoint up to :data:`sane.checkpoints.MAX_ABS`, the largest weight any
    computation here accepts (:func:`sane.checkpoints.weight_limit`).
    """

    token_size: int | None = None
    align: bool = False
    include_batchnorm: bool = False
    epochs: tuple[int, ...] | None = None
    seed: int = 0
    max_abs: float | None = None

    def __post_init__(self) -> None:
        require(self.token_size is None or self.token_size >= 1, "token_size", "positive",
                self.token_size)
        require(self.max_abs is None or self.max_abs > 0, "max_abs", "positive", self.max_abs)
        require(self.epochs is None or (len(self.epochs) > 0 and min(self.epochs) >= 0),
                "epochs", "a non-empty list of epochs >= 0", self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return {"token_size": self.token_size, "align": self.align,
                "include_batchnorm": self.include_batchnorm,
                "epochs": None if self.epochs is None else list(self.epochs), "seed": self.seed,
                "max_abs": self.max_abs}


class TokenStore:
    """A prepared token store, opened read-only.

    ``tokenizer`` the tokenizer that made it (its ``manifest``, ``standardization`` and
    permutation ``spec`` are also attributes of the store);
    ``tokens`` ``[M, N, d_t]`` float32 memory map; ``mask`` ``[N, d_t]`` bool; ``positions``
    ``[N, 3]`` int64; ``rows[m]`` = ``(model_id, epoch, split)``; ``properties`` ``[M, P]``
    float64 named by ``property_names``; ``architectures`` the distinct architectures of the
    zoo's models (activation, dropout... may differ; the parameter shapes do not), row ``m``
    of ``architectures[row_architecture[m]]``.
    """

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.tokenizer = Tokenizer.from_pretrained(path)
        self.manifest = self.tokenizer.manifest
        self.standardization = self.tokenizer.standardization
        self.spec = self.tokenizer.spec
        self.rows: list[tuple[str, int, str]] = [
            (str(r["model"]), int(r["epoch"]), str(r["split"])) for r in meta["rows"]
        ]
        self.property_names: tuple[str, ...] = tuple(meta["property_names"])
        self.architectures = [ArchConfig.from_dict(a) for a in meta["architectures"]]
        self.row_architecture = [int(r["architecture"]) for r in meta["rows"]]
        if any(not 0 <= a < len(self.architectures) for a in self.row_architecture):
            raise FormatError(f"{path}: a row names an architecture that is not listed")
        n, d = self.manifest.num_tokens, self.manifest.token_size
        self.tokens = _load_npy(path / "tokens.npy", (len(self.rows), n, d), np.float32, mmap=True)
        self.mask = torch.from_numpy(_load_npy(path / "mask.npy", (n, d), np.bool_))
        self.positions = torch.from_numpy(_load_npy(path / "positions.npy", (n, 3), np.int64))
        self.properties = _load_npy(path / "properties.npy",
                                    (len(self.rows), len(self.property_names)), np.float64)
        if not torch.equal(self.mask, self.manifest.mask()) or not torch.equal(
            self.positions, self.manifest.positions()
        ):
            raise FormatError(f"{path}: mask.npy or positions.npy disagree with the manifest")

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        path = Path(path)
        file = path / MANIFEST
        if not file.is_file():
            raise FormatError(f"{path} is not a token store: {MANIFEST} not found "
                              "(run `sane prepare ZOO --out STORE`)")
        try:
            meta = atomic.read_manifest(file, FORMAT, VERSION)
        except FormatError as error:
            if _is_set(file):
                raise StoreSetError(f"{path} holds a store of several layouts (a mixed zoo): "
                                    "open it with open_store, or give one layout, "
                                    "STORE/layouts/K") from error
            raise
        try:
            return cls(path, meta)
        except FormatError:
            raise  # it names its file (a tokenizer or an array of the store)
        except (KeyError, TypeError, ValueError) as error:
            raise FormatError(f"{file}: malformed store manifest ({error!r})") from error

    @property
    def settings(self) -> StoreSettings:
        return _settings(self.path, self.meta)

    @property
    def layouts(self) -> list[TokenStore]:
        """The single-layout stores this one is made of: itself (see :class:`StoreSet`)."""
        return [self]

    @property
    def zoo_path(self) -> Path:
        """The zoo the store was prepared from (recorded relative to the store)."""
        return self.path / self.meta["zoo"]

    @property
    def alignment(self) -> Alignment | None:
        return Alignment.load(self.path) if self.settings.align else None

    def split_rows(self, split: str) -> np.ndarray:
        """Indices of the rows (checkpoints) of ``split`` ("train", "val" or "test")."""
        if split not in ("train", "val", "test"):
            raise ConfigError(f"split must be train, val or test, got {split!r}")
        return np.array([i for i, (_, _, s) in enumerate(self.rows) if s == split], dtype=np.int64)

    def property(self, name: str) -> np.ndarray:
        """``[M]`` float64 values of property ``name`` (NaN where unknown)."""
        if name not in self.property_names:
            raise ConfigError(f"unknown property {name!r}; known: {list(self.property_names)}")
        return self.properties[:, self.property_names.index(name)]

    def state_dict(self, row: int) -> dict[str, torch.Tensor]:
        """The checkpoint of ``row`` rebuilt from its tokens: de-standardized, in the aligned
        frame when the store is aligned; entries kept out of the tokens (batch norm by
        default) hold a fresh module's values."""
        return self.tokenizer.decode(torch.from_numpy(np.array(self.tokens[row])))

    def architecture(self, row: int) -> ArchConfig:
        """The architecture of the model of ``row`` (its own activation, dropout...)."""
        return self.architectures[self.row_architecture[row]]

    def model(self, row: int, state_dict: dict[str, torch.Tensor] | None = None
              ) -> torch.nn.Module:
        """A network of ``row``'s own architecture holding ``state_dict`` (canonical keys,
        e.g. decoded tokens), by default the row's checkpoint (:meth:`state_dict`)."""
        arch = self.architecture(row)
        net = build_model(arch, seed=0)
        net.load_state_dict(as_architecture(
            arch, self.state_dict(row) if state_dict is None else state_dict))
        return net


class StoreSet:
    """The token store of a mixed zoo: ``layouts[k]`` a complete :class:`TokenStore` per
    parameter layout (``STORE/layouts/<k>``), all with one token size; ``settings`` as
    asked of ``sane prepare``."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.layouts = [TokenStore.open(path / "layouts" / str(k))
                        for k in range(int(meta["layouts"]))]
        if len({s.manifest.token_size for s in self.layouts}) != 1:
            raise FormatError(f"{path}: its layouts have different token sizes")

    @classmethod
    def open(cls, path: str | Path) -> StoreSet:
        path = Path(path)
        meta = atomic.read_manifest(path / MANIFEST, SET_FORMAT, SET_VERSION)
        try:
            return cls(path, meta)
        except (KeyError, TypeError, ValueError) as error:
            raise FormatError(f"{path / MANIFEST}: malformed store set ({error!r})") from error

    @property
    def settings(self) -> StoreSettings:
        return _settings(self.path, self.meta)

    @property
    def zoo_path(self) -> Path:
        return self.path / self.meta["zoo"]


def _settings(path: Path, meta: dict[str, Any]) -> StoreSettings:
    """The settings recorded in a store's manifest (FormatError if malformed)."""
    try:
        return from_table(StoreSettings, meta["settings"], f"{path}: settings")
    except ConfigError as error:
        raise FormatError(str(error)) from error


def open_store(path: str | Path) -> TokenStore | StoreSet:
    """The token store at ``path``: a :class:`TokenStore`, or a :class:`StoreSet` for a
    mixed zoo."""
    try:
        return TokenStore.open(path)
    except StoreSetError:
        return StoreSet.open(path)


def _is_set(file: Path) -> bool:
    meta = atomic.read_json(file)
    return isinstance(meta, dict) and meta.get("format") == SET_FORMAT


def prepare_store(
    zoo_path: str | Path,
    out: str | Path,
    settings: StoreSettings = StoreSettings(),
    *,
    progress: bool = True,
) -> TokenStore | StoreSet:
    """Tokenize every selected checkpoint of the zoo at ``zoo_path`` into a store at ``out``
    (a :class:`StoreSet` when the zoo mixes parameter layouts).

    Checkpoints with non-finite weights, or weights above ``settings.max_abs`` (never above
    :data:`sane.checkpoints.MAX_ABS`), are left out (and counted in ``store.json``). A
    complete store with the same settings is returned as is; different settings raise
    :class:`ConfigError`, and a store directory another process is writing
    :class:`~sane.errors.BusyError` (:mod:`sane.locking`).
    """
    zoo, out = Zoo.open(zoo_path), Path(out)
    groups = layout_groups(zoo)
    with writer_lock(out):
        if len(groups) > 1:
            return _prepare_set(zoo, groups, out, settings, progress)
        return _prepare(zoo, out, settings, progress)


def _prepare(zoo: Zoo, out: Path, settings: StoreSettings, progress: bool) -> TokenStore:
    """The store of ``zoo`` (models of one parameter layout) at ``out``."""
    if (out / MANIFEST).is_file():
        store = TokenStore.open(out)
        if store.settings != settings:
            raise ConfigError(f"{out} holds a store prepared with {store.settings.to_dict()}; "
                              "choose another --out or remove it")
        return store
    alignment = _alignment(zoo, out, settings, progress) if settings.align else None
    fit = fit_zoo(zoo, token_size=settings.token_size, align=settings.align,
                  include_batchnorm=settings.include_batchnorm, seed=settings.seed,
                  epochs=settings.epochs, max_abs=settings.max_abs, alignment=alignment,
                  progress=progress)
    tokenizer, rows = fit.tokenizer, fit.rows
    arch_of = {m: json.dumps(zoo.model(m).architecture.to_dict(), sort_keys=True)
               for m, _, _ in rows}
    architectures = sorted(set(arch_of.values()))
    _write_tokens(out, rows, tokenizer.manifest,
                  lambda m, e: tokenizer.standardization.apply(fit.load(m, e)), progress)
    atomic.save_array(out / "mask.npy", tokenizer.manifest.mask().numpy())
    atomic.save_array(out / "positions.npy", tokenizer.manifest.positions().numpy())
    atomic.save_array(out / "properties.npy", _properties(zoo, rows))
    tokenizer.save_pretrained(out)
    atomic.write_json(out / MANIFEST, {
        "format": FORMAT, "version": VERSION,
        "zoo": os.path.relpath(zoo.path.resolve(), out.resolve()),
        "architecture": fit.layout.arch.to_dict(), "settings": settings.to_dict(),
        "alignment_reference": None if alignment is None else alignment.reference,
        "architectures": [json.loads(a) for a in architectures],
        "rows": [{"model": m, "epoch": e, "split": s,
                  "architecture": architectures.index(arch_of[m])} for m, e, s in rows],
        "skipped_non_finite": fit.skipped["non_finite"],
        "skipped_above_max_abs": fit.skipped["above_max_abs"],
        "property_names": list(PROPERTIES),
    })
    return TokenStore.open(out)


def _prepare_set(zoo: Zoo, groups: list[list[str]], out: Path, settings: StoreSettings,
                 progress: bool) -> StoreSet:
    """One store per layout group of ``zoo`` under ``out/layouts``, then ``store.json``."""
    if (out / MANIFEST).is_file():
        existing = open_store(out)
        if not isinstance(existing, StoreSet) or existing.settings != settings:
            raise ConfigError(f"{out} holds another store; choose another --out or remove it")
        return existing
    token_size = settings.token_size or max(
        _auto_token_size(zoo.model(ids[0]).architecture)
        for ids in groups)
    for k, ids in enumerate(groups):
        _prepare(zoo.subset(ids), out / "layouts" / str(k),
                 dataclasses.replace(settings, token_size=token_size), progress)
    atomic.write_json(out / MANIFEST, {
        "format": SET_FORMAT, "version": SET_VERSION, "layouts": len(groups),
        "zoo": os.path.relpath(zoo.path.resolve(), out.resolve()),
        "settings": settings.to_dict(),
        "architectures": [zoo.model(ids[0]).architecture.to_dict() for ids in groups],
    })
    return StoreSet.open(out)


def _auto_token_size(arch: ArchConfig) -> int:
    """The token size ``arch`` needs by default: its longest row (see :func:`make_manifest`)."""
    model = build_model(arch, seed=0)
    return make_manifest(model.state_dict(), model=model).token_size


def _alignment(zoo: Zoo, out: Path, settings: StoreSettings, progress: bool) -> Alignment:
    if (out / ALIGNMENT_MANIFEST).is_file():
        alignment = Alignment.load(out)
        if alignment.seed == settings.seed and set(alignment.perms) <= {m.id for m in zoo.models}:
            return alignment
    alignment = align_zoo(zoo, seed=settings.seed, progress=progress)
    alignment.save(out)
    return alignment


def _write_tokens(
    out: Path,
    rows: Sequence[tuple[str, int, str]],
    manifest: TokenManifest,
    load: Callable[[str, int], dict[str, torch.Tensor]],
    progress: bool,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".tokens.npy.partial"
    shape = (len(rows), manifest.num_tokens, manifest.token_size)
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    for i, (model_id, epoch, _) in enumerate(tqdm(rows, desc="tokenizing", unit="ckpt",
                                                  disable=not progress)):
        tokenize_into(load(model_id, epoch), manifest, array[i])
    array.flush()
    del array
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / "tokens.npy")


def _properties(zoo: Zoo, rows: Iterable[tuple[str, int, str]]) -> np.ndarray:
    metrics = {}
    values = []
    for model_id, epoch, _ in rows:
        if model_id not in metrics:
            metrics[model_id] = {r["epoch"]: r for r in zoo.metrics(model_id)}
        row = metrics[model_id][epoch]
        values.append([float("nan") if row.get(k) is None else float(row[k]) for k in PROPERTIES])
    return np.asarray(values, dtype=np.float64).reshape(-1, len(PROPERTIES))


def _load_npy(path: Path, shape: tuple[int, ...], dtype: type, *, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise FormatError(f"{path}: missing")
    array = atomic.read_array(path, mmap=mmap)
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise FormatError(f"{path}: expected {np.dtype(dtype)} {list(shape)}, "
                          f"got {array.dtype} {list(array.shape)}")
    return array
