"""Train a population of models into a zoo directory; rerunning resumes an interrupted run.

:func:`train_population` enumerates the models of a :class:`~sane.zoo.config.PopulationConfig`,
creates the zoo (manifest with the resolved config, the dataset and the model-level split),
splits the models into groups that train together (:func:`plan_groups`, see
:mod:`sane.zoo.population`) and records every epoch of every model, epoch 0 being the
initialization. Architectures the population engine cannot stack (batch norm: the ResNets)
train one model at a time, through the same loop, records and resume.

What a row records (:data:`sane.zoo.storage.METRIC_KEYS`): ``val_*`` and ``test_*`` come from
an evaluation pass (dropout off) over the whole validation and test splits after the epoch;
``train_*`` are running averages over the epoch's steps (dropout on, weights changing), as in
the Model Zoos, unless ``train_metrics = "eval"`` asks for an evaluation pass over the training
images. Epoch 0 is evaluated, never trained. ``ggap = train_acc - test_acc``.

Crash safety: a group of models advances one epoch at a time. For each model the resume
state (optimizer moments, step count), then the checkpoint, then the metrics row are written,
each atomically; the previous epoch's resume states are deleted only once every model of the
group has its row, and all of them once the group is finished. A rerun restarts each group
from the last epoch all its models recorded (random streams derive from seed and epoch, so
nothing else is needed) and skips writing rows that exist: it trains no finished epoch again,
except that a group killed halfway through writing an epoch recomputes that one epoch, which
costs what training the models that missed it costs anyway. The checkpoints of an interrupted
and resumed run are bit-identical to those of an uninterrupted run (same machine, same
``threads`` and ``group_size``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sane.data import load_dataset
from sane.errors import ConfigError
from sane.zoo.architectures import build_model, input_shape
from sane.zoo.config import PopulationConfig, enumerate_models
from sane.zoo.population import (
    SingleNet,
    StackedNet,
    StackedOptimizer,
    evaluate,
    is_stackable,
    model_layout,
    train_epoch,
)
from sane.zoo.storage import MANIFEST, ModelEntry, Zoo, make_split
from sane.zoo.workers import run_in_workers

CONFIG_KEY = "population"


@dataclass(frozen=True)
class TrainingData:
    """The splits in model layout (see :func:`~sane.zoo.population.model_layout`)."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    info: dict[str, Any]


def train_population(config: PopulationConfig, out: str | Path, *, progress: bool = True) -> Zoo:
    """Train the population ``config`` into the zoo directory ``out`` and return the zoo.

    When ``out`` already holds a zoo of the same config, training continues where it stopped
    (a finished zoo is returned as is); a zoo of another config raises
    :class:`~sane.errors.ConfigError`. With ``config.workers > 1``, groups of models train in
    that many processes.
    """
    out = Path(out)
    entries = enumerate_models(config)
    zoo = _open_existing(out, config, entries)
    groups = plan_groups(entries, config.models_per_group)
    if zoo is not None and all(_start_epoch(zoo, g) >= config.epochs for g in groups):
        for group in groups:
            _finish(zoo, group)
        return zoo
    data = load_training_data(config)
    _check_batchnorm_batches(groups, len(data.train[1]))
    if zoo is None:
        split = make_split([e.id for e in entries], config.split, config.split_seed)
        zoo = Zoo.create(out, entries, dataset=data.info, split=split,
                         extra={CONFIG_KEY: config.to_dict()})
    tasks = []
    for group in groups:
        start = _start_epoch(zoo, group)
        if start >= config.epochs:
            _finish(zoo, group)
        else:
            tasks.append((group, start))
    remaining = sum(len(g) * (config.epochs - max(s, 0)) for g, s in tasks)
    bar = tqdm(total=remaining, disable=not progress, unit="model-epoch", smoothing=0.05,
               desc=f"training {len(entries)} models in {len(groups)} groups",
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} model-epochs "
               "[{elapsed}<{remaining}, {rate_fmt}]")
    with bar:
        def report(model_epochs: float) -> None:  # float sums may overshoot by a rounding
            bar.update(min(model_epochs, bar.total - bar.n))

        workers = min(config.workers, len(tasks))
        if workers > 1:
            run_in_workers(zoo.path, config, data, tasks, workers, report)
        else:
            with _threads(config.threads):
                for group, start in tasks:
                    train_group(zoo, group, start, data, config, report)
    return zoo


def plan_groups(entries: Sequence[ModelEntry], group_size: Callable[[int], int]
                ) -> list[list[ModelEntry]]:
    """Split models into groups trained together: same layers, activation and batch size.

    Each set of compatible models is cut into the fewest groups of at most
    ``group_size(batch_size)``, of near-equal sizes; inside a group, models are ordered by
    optimizer, then by id. A model whose architecture cannot be stacked
    (:func:`~sane.zoo.population.is_stackable`) is a group of its own.
    """
    compatible: dict[tuple, list[ModelEntry]] = {}
    for entry in entries:
        # Weights (init) and dropout probabilities may differ inside a group; layers may not.
        shape = dataclasses.replace(entry.architecture, init="uniform", dropout=0.0)
        compatible.setdefault((shape, entry.training["batch_size"]), []).append(entry)
    groups = []
    for (shape, batch_size), members in compatible.items():
        with torch.device("meta"):  # the layers without their weights: fast, draws no numbers
            stackable = is_stackable(build_model(shape))
        if not stackable:
            groups += [[entry] for entry in members]
            continue
        count = -(-len(members) // group_size(batch_size))
        for i in range(count):
            part = members[i * len(members) // count:(i + 1) * len(members) // count]
            groups.append(sorted(part, key=lambda e: (e.training["optimizer"], e.id)))
    return groups


def load_training_data(config: PopulationConfig) -> TrainingData:
    """Load the dataset of ``config``, check it fits the architecture, keep ``train_size``."""
    d, arch = config.dataset, config.architecture
    expected = input_shape(arch)
    one_dim = len(expected) == 2
    size = d.size if d.size is not None or one_dim else arch.input_size
    ds = load_dataset(d.name, d.root, size=size, grayscale=d.grayscale,
                      val_fraction=d.val_fraction, seed=d.seed)
    if ds.input_shape != expected:
        raise ConfigError(
            f"dataset {d.name!r} gives inputs of shape {list(ds.input_shape)}, but architecture "
            f"{arch.name!r} expects {list(expected)}: adjust [dataset] size/grayscale or "
            "[architecture] in_channels/input_size"
        )
    if ds.num_classes != arch.num_classes:
        raise ConfigError(f"dataset {d.name!r} has {ds.num_classes} classes, but "
                          f"[architecture] num_classes is {arch.num_classes}")
    train = ds.train
    if d.train_size is not None:
        if d.train_size > len(train):
            raise ConfigError(f"[dataset] train_size is {d.train_size}, but {d.name!r} has only "
                              f"{len(train)} training images")
        train = train.head(d.train_size)
    info = {
        "name": ds.name, "source": ds.source, "root": d.root, "size": size,
        "grayscale": d.grayscale, "val_fraction": d.val_fraction, "seed": d.seed,
        "train_size": d.train_size, "num_classes": ds.num_classes,
        "input_shape": list(ds.input_shape), "mean": list(ds.mean), "std": list(ds.std),
        "split_note": ds.split_note,
        "examples": {"train": len(train), "val": len(ds.val), "test": len(ds.test)},
    }
    return TrainingData(
        train=(model_layout(train.x), train.y), val=(model_layout(ds.val.x), ds.val.y),
        test=(model_layout(ds.test.x), ds.test.y), info=info,
    )


# -- one group -----------------------------------------------------------------------------

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


def _finish(zoo: Zoo, group: list[ModelEntry]) -> None:
    """Remove what a run killed after its last rows left behind."""
    for entry in group:
        zoo.remove_resume_state(entry.id)
    _remove_temporary_files(zoo, group)


def _remove_temporary_files(zoo: Zoo, group: list[ModelEntry]) -> None:
    """Delete the temporary files of atomic writes that a killed run left half written."""
    for entry in group:
        for file in zoo.model_dir(entry.id).glob(".*.tmp"):
            file.unlink(missing_ok=True)


def _last_epoch(zoo: Zoo, model_id: str) -> int:
    last = zoo.last_epoch(model_id)
    return -1 if last is None else last


def _start_epoch(zoo: Zoo, group: list[ModelEntry]) -> int:
    """The epoch the group continues from: the last one all its models recorded (-1: none)."""
    return min(_last_epoch(zoo, e.id) for e in group)


# -- zoo and environment -------------------------------------------------------------------

def _check_batchnorm_batches(groups: list[list[ModelEntry]], images: int) -> None:
    """Batch norm cannot train on a batch of one image: refuse a last batch of one."""
    for group in groups:
        batch_size = group[0].training["batch_size"]
        if images % batch_size != 1:
            continue
        with torch.device("meta"):  # the layers only
            modules = list(build_model(group[0].architecture).modules())
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules):
            raise ConfigError(
                f"{images} training images in batches of {batch_size} leave a last batch of "
                f"one image, on which batch norm ({group[0].architecture.name}) cannot train; "
                "change [dataset] train_size or the batch size"
            )


def _open_existing(out: Path, config: PopulationConfig, entries: list[ModelEntry]) -> Zoo | None:
    """The zoo at ``out`` if there is one, after checking it was started with ``config``."""
    if not (out / MANIFEST).is_file():
        return None
    zoo = Zoo.open(out)
    stored = zoo.manifest.get(CONFIG_KEY)
    if stored is None:
        raise ConfigError(f"{out} holds a zoo that `sane zoo train` did not create; "
                          "choose another --out")
    # The number of workers changes no result, so a run may resume with another.
    stored = {k: v for k, v in stored.items() if k != "workers"}
    requested = {k: v for k, v in json.loads(json.dumps(config.to_dict())).items()
                 if k != "workers"}
    if stored != requested:
        changed = _differences(stored, requested)
        raise ConfigError(
            f"{out} holds a zoo trained with another config (differs in: {'; '.join(changed)}); "
            "rerun with the same config and overrides to resume, or choose another --out"
        )
    if zoo.manifest["models"] != [e.to_dict() for e in entries]:
        raise ConfigError(f"{out}: the stored models differ from those the config enumerates "
                          "(zoo written by another version of sane?)")
    return zoo


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b))
                for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [f"{prefix.rstrip('.')} stored {a!r}, requested {b!r}"]


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
