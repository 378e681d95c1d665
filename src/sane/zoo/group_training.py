"""Train one group of models into a zoo, epoch by epoch, with crash-safe records.

A group is a list of models that train together (:func:`sane.zoo.generate.plan_groups`):
stacked into one :class:`~sane.zoo.population.StackedNet`, or a :class:`SingleNet` for a model
the population engine cannot stack (batch norm: the ResNets), through the same loop, records
and resume. :func:`train_group` records every epoch of every model, epoch 0 being the
initialization. The generation driver (:mod:`sane.zoo.generate`) and the worker processes
(:mod:`sane.zoo.workers`) both run groups through it.

What a row records (:data:`sane.zoo.storage.METRIC_KEYS`): ``val_*`` and ``test_*`` come from
an evaluation pass (dropout off) over the whole validation and test splits after the epoch;
``train_*`` are running averages over the epoch's steps (dropout on, weights changing), as in
the Model Zoos, unless ``train_metrics = "eval"`` asks for an evaluation pass over the training
images. Epoch 0 is evaluated, never trained. ``ggap = train_acc - test_acc``.

Crash safety: a group of models advances one epoch at a time. For each model the resume
state (optimizer moments, step count), then the checkpoint, then the metrics row are written,
each atomically; the previous epoch's resume states are deleted only once every model of the
group has its row, and all of them once the group is finished (:func:`finish_group`). A rerun
restarts each group from the last epoch all its models recorded (:func:`start_epoch`; random
streams derive from seed and epoch, so nothing else is needed) and skips writing rows that
exist: it trains no finished epoch again, except that a group killed halfway through writing an
epoch recomputes that one epoch, which costs what training the models that missed it costs
anyway. The checkpoints of an interrupted and resumed run are bit-identical to those of an
uninterrupted run (same machine, same ``threads`` and ``group_size``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sane.zoo.architectures import build_model
from sane.zoo.config import PopulationConfig
from sane.zoo.population import (
    SingleNet,
    StackedNet,
    evaluate,
    is_stackable,
    train_epoch,
)
from sane.zoo.stacked_optimizer import StackedOptimizer
from sane.zoo.storage import ModelEntry, Zoo


@dataclass(frozen=True)
class TrainingData:
    """The splits in model layout (see :func:`~sane.zoo.population.model_layout`)."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    info: dict[str, Any]


def train_group(zoo: Zoo, group: list[ModelEntry], start: int, data: TrainingData,
                config: PopulationConfig, report: Callable[[float], None]) -> None:
    """Train ``group`` together from epoch ``start`` (-1: from scratch) to the last epoch.

    A group of one model that cannot be stacked trains as a :class:`SingleNet`.
    ``report(model_epochs)`` is called as training advances (fractions of model-epochs).
    """
    ids = [e.id for e in group]
    _remove_temporary_files(zoo, group)
    recorded = [_last_epoch(zoo, i) for i in ids]
    models = [build_model(e.architecture, e.seed) for e in group]
    alone = len(models) == 1 and not is_stackable(models[0])
    net = SingleNet(models[0]) if alone else StackedNet(models)
    kinds = [e.training["optimizer"] for e in group]
    optimizer = StackedOptimizer(
        net, kinds, lr=[e.training["lr"] for e in group],
        weight_decay=[e.training["weight_decay"] for e in group],
        momentum=[e.training.get("momentum", 0.0) for e in group],
    )
    if start >= 0:
        net.load_state_dicts([zoo.load_checkpoint(i, start) for i in ids])
        optimizer.load_state_dicts(
            [zoo.load_resume_state(i, start, kind) for i, kind in zip(ids, kinds)])
    else:
        train_metrics = evaluate(net, *data.train)
        _record(zoo, group, 0, net, optimizer, train_metrics, data, recorded, config.epochs)
        start = 0
    seeds = [e.seed for e in group]
    batch_size = group[0].training["batch_size"]
    for epoch in range(start + 1, config.epochs + 1):
        train_metrics = train_epoch(
            net, optimizer, *data.train, seeds=seeds, epoch=epoch, batch_size=batch_size,
            on_step=lambda fraction: report(fraction * len(group)),
        )
        if config.train_metrics == "eval":
            train_metrics = evaluate(net, *data.train)
        _record(zoo, group, epoch, net, optimizer, train_metrics, data, recorded, config.epochs)


def start_epoch(zoo: Zoo, group: list[ModelEntry]) -> int:
    """The epoch the group continues from: the last one all its models recorded (-1: none)."""
    return min(_last_epoch(zoo, e.id) for e in group)


def finish_group(zoo: Zoo, group: list[ModelEntry]) -> None:
    """Remove what a run killed after its last rows left behind."""
    for entry in group:
        zoo.remove_resume_state(entry.id)
    _remove_temporary_files(zoo, group)


def _record(zoo: Zoo, group: list[ModelEntry], epoch: int, net: StackedNet | SingleNet,
            optimizer: StackedOptimizer, train: tuple[torch.Tensor, torch.Tensor],
            data: TrainingData, recorded: list[int], epochs: int) -> None:
    """Evaluate and write ``epoch`` for every model of the group that has not recorded it."""
    val_loss, val_acc = evaluate(net, *data.val)
    test_loss, test_acc = evaluate(net, *data.test)
    states, optimizer_states = net.state_dicts(), optimizer.state_dicts()
    for k, entry in enumerate(group):
        if recorded[k] >= epoch:
            continue
        row = {"train_loss": train[0][k], "train_acc": train[1][k], "val_loss": val_loss[k],
               "val_acc": val_acc[k], "test_loss": test_loss[k], "test_acc": test_acc[k]}
        zoo.save_resume_state(entry.id, epoch, optimizer_states[k], entry.training["optimizer"])
        zoo.write_epoch(entry.id, epoch, states[k], {key: float(v) for key, v in row.items()})
    for entry in group:
        zoo.remove_resume_state(entry.id, keep=epoch if epoch < epochs else None)


def _remove_temporary_files(zoo: Zoo, group: list[ModelEntry]) -> None:
    """Delete the temporary files of atomic writes that a killed run left half written."""
    for entry in group:
        for file in zoo.model_dir(entry.id).glob(".*.tmp"):
            file.unlink(missing_ok=True)


def _last_epoch(zoo: Zoo, model_id: str) -> int:
    last = zoo.last_epoch(model_id)
    return -1 if last is None else last
