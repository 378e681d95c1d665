"""Generate a model zoo: train a population into a zoo directory; a rerun resumes it.

This is the driver of ``sane zoo train`` (not to be confused with :mod:`sane.train`, which
pretrains SANE). :func:`train_population` enumerates the models of a
:class:`~sane.zoo.config.PopulationConfig`, claims the zoo directory (creates the zoo with the
resolved config, the dataset and the model-level split, or checks that an existing one was
started with the same config), splits the models into groups that train together
(:func:`plan_groups`) and runs the unfinished groups, in this process, in worker processes
(:mod:`sane.zoo.workers`) or as Ray tasks (:mod:`sane.zoo.ray_backend`). Training one group,
its records and its crash safety are :mod:`sane.zoo.group_training`; the batched training
algorithm is :mod:`sane.zoo.population`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sane.data import load_dataset
from sane.errors import ConfigError
from sane.locking import writer_lock
from sane.zoo.architectures import build_model, input_shape
from sane.zoo.config import PopulationConfig, enumerate_models
from sane.zoo.group_training import TrainingData, finish_group, start_epoch, train_group
from sane.zoo.population import is_stackable, model_layout
from sane.zoo.ray_backend import require_ray, run_on_ray
from sane.zoo.storage import MANIFEST, ModelEntry, Zoo, make_split
from sane.zoo.workers import run_in_workers

CONFIG_KEY = "population"
BACKENDS = ("local", "ray")


def train_population(config: PopulationConfig, out: str | Path, *, progress: bool = True,
                     backend: str = "local", address: str | None = None) -> Zoo:
    """Train the population ``config`` into the zoo directory ``out`` and return the zoo.

    When ``out`` already holds a zoo of the same config, training continues where it stopped
    (a finished zoo is returned as is); a zoo of another config raises
    :class:`~sane.errors.ConfigError`. With the ``"local"`` backend and ``config.workers > 1``,
    groups of models train in that many processes; the ``"ray"`` backend trains each group as
    a Ray task, on a local Ray instance or on the cluster at ``address``
    (:mod:`sane.zoo.ray_backend`). Both backends write the same zoo. A zoo directory another
    process is writing raises :class:`~sane.errors.BusyError` (:mod:`sane.locking`).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if address is not None and backend != "ray":
        raise ConfigError(f"an address ({address!r}) is for the ray backend; "
                          "add --backend ray or drop --address")
    if backend == "ray":
        require_ray()  # before anything is written
    out, entries = Path(out), enumerate_models(config)
    with writer_lock(out):  # worker processes and Ray tasks write under this process's lock
        return _train(config, entries, out, progress, backend, address)


def _train(config: PopulationConfig, entries: list[ModelEntry], out: Path, progress: bool,
           backend: str, address: str | None) -> Zoo:
    """:func:`train_population` of the models ``entries`` once it holds ``out``'s lock."""
    zoo = _open_existing(out, config, entries)
    groups = plan_groups(entries, config.models_per_group)
    if zoo is not None and all(start_epoch(zoo, g) >= config.epochs for g in groups):
        for group in groups:
            finish_group(zoo, group)
        return zoo
    data = load_training_data(config)
    _check_batchnorm_batches(groups, len(data.train[1]))
    if zoo is None:
        split = make_split([e.id for e in entries], config.split, config.split_seed)
        zoo = Zoo.create(out, entries, dataset=data.info, split=split,
                         extra={CONFIG_KEY: config.to_dict()})
    tasks = []
    for group in groups:
        start = start_epoch(zoo, group)
        if start >= config.epochs:
            finish_group(zoo, group)
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
        if backend == "ray":
            run_on_ray(zoo.path, config, data, tasks, report, address)
        elif workers > 1:
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
    for name in config.space.architecture or ():  # a mixed zoo: every architecture fits
        if input_shape(dataclasses.replace(arch, name=name)) != expected:
            raise ConfigError(f"[space] architecture: {name!r} takes inputs of another shape "
                              f"than {arch.name!r}; a zoo's models share their inputs")
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
