"""The prompt models of a sampling request, with what sampling around them needs.

Prompts come from one of two places:

- **the store** SANE was pretrained on (:func:`store_prompts`): the first ``count``
  training-split models (in id order, or the most accurate on the validation split) at one
  stored epoch, in the store's tokens (or models of the validation or test split: held out
  from pretraining); scored on the zoo's task or a new one of the same
  input and classes; the other training models at that epoch come along, to measure how
  close samples lie to them (:mod:`sane.downstream.memorization`);
- **a zoo of a target architecture** (:func:`zoo_prompts`), e.g. 1-5 models of a wider or
  deeper network trained for 1-5 epochs, as ``sane zoo train`` writes them (the most
  accurate on the validation split with ``best``; for a run on a
  mixed zoo, positions are mapped into its first layout): a tokenizer
  with the SANE's token size is fitted on them (aligned to one of them by weight matching
  when the architecture has a permutation spec, standardized over all of them), and their
  tokens are given positions within the pretrained layout
  (:func:`sane.weights.positions.relative_positions`); scored on that zoo's task. A
  classifier with another number of classes than the pretraining zoo's is re-initialized in
  every sampled model (the prompts keep theirs).

:class:`SampleRequest` is what ``sane sample`` was asked, as ``samples.json`` records it;
:func:`request_prompts` rebuilds its prompts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sane.data import Dataset, load_dataset
from sane.downstream.sampling import SamplingConfig
from sane.errors import ConfigError, FormatError
from sane.run import Run
from sane.weights.permutations import permutation_spec
from sane.weights.positions import relative_positions
from sane.weights.store import TokenStore
from sane.weights.tokenizer import Tokenizer
from sane.weights.zoo_tokenizer import fit_zoo
from sane.zoo import ArchConfig, Zoo, build_model
from sane.zoo.architectures import input_shape
from sane.zoo.evaluation import zoo_data
from sane.zoo.layout import as_architecture

# The training models that come with store prompts (to measure how close samples lie to
# them) are held in memory only up to this many bytes of tokens.
TRAINING_BYTES = 2**30


@dataclass(frozen=True)
class Prompts:
    """``E`` prompt models: ``ids`` (model, epoch), ``arch_index`` into ``architectures``,
    ``states`` (canonical keys, aligned); their ``tokenizer`` (tokenizes them and decodes
    samples of their layout), the ``positions [N, 3]`` SANE sees their tokens at, and the
    ``data`` of their task; ``fresh`` the places (in state-dict order) of a classifier that
    sampled models get freshly initialized, because it has another number of classes than
    the pretraining zoo's; ``training`` per architecture index the training models SANE saw
    at the prompts' epoch (states like ``states``; none for prompts from another zoo, or when
    they would not fit in :data:`TRAINING_BYTES`)."""

    ids: list[tuple[str, int]]
    arch_index: list[int]
    architectures: list[ArchConfig]
    states: list[dict[str, torch.Tensor]]
    tokenizer: Tokenizer
    positions: torch.Tensor
    data: Dataset
    fresh: tuple[int, ...] = ()
    training: dict[int, list[dict[str, torch.Tensor]]] = field(default_factory=dict)

    def groups(self) -> dict[int, list[int]]:
        """Architecture index → the prompts of that architecture (sampled on their own)."""
        groups: dict[int, list[int]] = {}
        for i, a in enumerate(self.arch_index):
            groups.setdefault(a, []).append(i)
        return groups

    def network(self, i: int) -> nn.Module:
        """Prompt ``i`` as a network of its own architecture."""
        arch = self.architectures[self.arch_index[i]]
        net = build_model(arch, seed=0)
        net.load_state_dict(as_architecture(arch, self.states[i]))
        return net


def store_prompts(store: TokenStore, count: int | None, epoch: int | None = None, *,
                  best: bool = False, dataset: str | None = None, root: str | None = None,
                  split: str = "train") -> Prompts:
    """Prompts from the store's models of ``split`` (:func:`prompt_rows`; ``count`` None:
    all of them), for its zoo's task or ``dataset``, with every training model at the same
    epochs."""
    rows = prompt_rows(store, count, epoch, best=best, split=split)
    everyone = prompt_rows(store, None, epoch)
    training: dict[int, list[dict[str, torch.Tensor]]] = {}
    if len(everyone) * store.tokens[0].nbytes <= TRAINING_BYTES:
        for r in everyone:
            training.setdefault(store.row_architecture[r], []).append(store.state_dict(r))
    return Prompts([store.rows[r][:2] for r in rows], [store.row_architecture[r] for r in rows],
                   store.architectures, [store.state_dict(r) for r in rows], store.tokenizer,
                   store.positions,
                   target_data(store, dataset, root), training=training)


def zoo_prompts(zoo_path: str | Path, source: Tokenizer, count: int,
                epoch: int | None = None, *, best: bool = False) -> Prompts:
    """Prompts from a zoo of a target architecture for a SANE whose tokenizer is
    ``source``: ``count`` of its models (every split; in id order, or the most accurate) at
    ``epoch`` (default: each model's last), scored on that zoo's task."""
    zoo = Zoo.open(zoo_path)
    arch = min(zoo.models, key=lambda m: m.id).architecture
    try:
        permutation_spec(build_model(arch, seed=0))
        aligned = True
    except ConfigError:  # no permutation spec: the prompts are not aligned
        aligned = False
    fit = fit_zoo(zoo, token_size=source.manifest.token_size, align=aligned,
                  splits=("train", "val", "test"))
    by_model: dict[str, list[int]] = {}
    for model_id, e, _ in fit.rows:
        by_model.setdefault(model_id, []).append(e)
    ids = [(m, max(es) if epoch is None else epoch) for m, es in sorted(by_model.items())
           if epoch is None or epoch in es]
    if len(ids) < count:
        raise ConfigError(f"{zoo.path}: {len(ids)} models have a usable checkpoint"
                          f"{'' if epoch is None else f' at epoch {epoch}'}; {count} prompts "
                          "were asked for")
    if best:
        ids = sorted(ids, key=lambda i: -_val_accuracy(zoo, *i))
    ids = ids[:count]
    states = [fit.load(m, e) for m, e in ids]
    manifest = fit.tokenizer.manifest
    architectures = sorted({zoo.model(m).architecture for m, _ in ids},
                           key=lambda a: repr(a.to_dict()))
    head = manifest.layers[-1]
    fresh = () if head.rows == source.manifest.layers[-1].rows else tuple(
        manifest.keys.index(k) for k in head.keys())
    return Prompts(ids, [architectures.index(zoo.model(m).architecture) for m, _ in ids],
                   architectures, states, fit.tokenizer,
                   relative_positions(source.manifest, manifest), zoo_data(zoo), fresh)


SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SampleRequest:
    """What ``sane sample`` was asked: the pretraining ``run`` (absolute path), prompts from
    its ``store`` (absolute path; None with ``prompts_from``, a zoo of another architecture),
    ``prompts`` of them at ``prompt_epoch`` (None: each model's last), the most accurate on
    validation with ``best_prompts``, of the store's ``prompt_split`` models (the training
    split, or held-out ones), scored on ``dataset`` read from ``root`` (None: the zoo's own
    task), sampled by ``config`` with the SANE in ``precision``. An output
    directory whose ``samples.json`` holds an equal request is reused."""

    run: str
    store: str | None
    prompts: int
    prompt_epoch: int | None
    best_prompts: bool
    config: SamplingConfig
    dataset: str | None
    root: str | None
    prompts_from: str | None = None
    precision: str = "fp32"
    prompt_split: str = "train"

    def __post_init__(self) -> None:
        if self.prompt_split not in SPLITS:
            raise ConfigError(f"prompts come from the store's {', '.join(SPLITS)} split, not "
                              f"{self.prompt_split!r}")

    def to_dict(self) -> dict[str, Any]:
        """The request as ``samples.json`` holds it: ``prompts_from``, ``precision`` and
        ``prompt_split`` only when they differ from their defaults, so that the requests of
        earlier versions (which had none of them) read the same."""
        table = dataclasses.asdict(self)
        for key, default in (("prompts_from", None), ("precision", "fp32"),
                             ("prompt_split", "train")):
            if table[key] == default:
                del table[key]
        return table


def request_prompts(request: SampleRequest) -> Prompts:
    """The prompts of a sampling request."""
    if request.prompts_from is not None:
        return zoo_prompts(request.prompts_from, Run(request.run).tokenizers()[0],
                           request.prompts, request.prompt_epoch, best=request.best_prompts)
    return store_prompts(Run(request.run).store(request.store), request.prompts,
                         request.prompt_epoch, best=request.best_prompts,
                         dataset=request.dataset, root=request.root,
                         split=request.prompt_split)


def prompt_rows(store: TokenStore, count: int | None, epoch: int | None, *,
                best: bool = False, split: str = "train") -> list[int]:
    """Store rows of ``count`` models of ``split`` (None: all of them) at ``epoch``
    (default: each model's last stored epoch): the first in id order, or with ``best``
    those of highest validation accuracy (the KDE30 protocol fits its KDE on the best 30 %);
    never ranked by test accuracy, which only reports."""
    by_model: dict[str, dict[int, int]] = {}
    for row in store.split_rows(split).tolist():
        model_id, e, _ = store.rows[row]
        by_model.setdefault(model_id, {})[e] = row
    rows = []
    for model_id in sorted(by_model):
        epochs = by_model[model_id]
        chosen = max(epochs) if epoch is None else epoch
        if chosen in epochs:
            rows.append(epochs[chosen])
    if count is None:
        count = len(rows)
    if len(rows) < count:
        which = "in the store" if epoch is None else f"with epoch {epoch} in the store"
        raise ConfigError(f"{store.path}: {len(rows)} {split}-split models are {which}; "
                          f"{count} prompts were asked for")
    if best:
        accuracy = store.property("val_acc")
        unknown = [store.rows[r][0] for r in rows if np.isnan(accuracy[r])]
        if unknown:
            raise FormatError(f"{store.path}: prompts are ranked by validation accuracy, and "
                              f"model {unknown[0]} has none at that epoch")
        rows = sorted(rows, key=lambda r: -accuracy[r])
    return rows[:count]


def target_data(store: TokenStore, dataset: str | None = None, root: str | None = None
                ) -> Dataset:
    """The data of the store's task: its zoo's own dataset
    (:func:`sane.zoo.evaluation.zoo_data`) or, for a new task, ``dataset`` (read from
    ``root``), resized and converted to the zoo's input; it must have as many classes."""
    if dataset is None:
        return zoo_data(Zoo.open(store.zoo_path))
    arch = store.architectures[0]
    expected = input_shape(arch)
    mismatch = (f"dataset {dataset!r} cannot feed the zoo's {arch.name}, which takes "
                f"{arch.num_classes} classes of inputs {list(expected)}")
    try:
        ds = load_dataset(dataset, root, size=None if len(expected) == 2 else arch.input_size,
                          grayscale=arch.in_channels == 1)
    except ConfigError as error:
        raise ConfigError(f"{mismatch}: {error}") from error
    if ds.input_shape != expected or ds.num_classes != arch.num_classes:
        raise ConfigError(f"{mismatch}: it gives {ds.num_classes} classes of inputs "
                          f"{list(ds.input_shape)}")
    return ds


def _val_accuracy(zoo: Zoo, model_id: str, epoch: int) -> float:
    row = {r["epoch"]: r for r in zoo.metrics(model_id)}.get(epoch, {})
    value = row.get("val_acc")
    if value is None:
        raise FormatError(f"{zoo.path}: model {model_id} has no validation accuracy at epoch "
                          f"{epoch}")
    return float(value)
