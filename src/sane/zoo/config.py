"""What a population of models is: the dataset, the architecture, the hyperparameter space.

A :class:`PopulationConfig` is read from a TOML file or a named preset (:data:`PRESETS`) by
:func:`load_config`, then turned into model entries by :func:`enumerate_models`. A TOML file
may start from a preset and override part of it::

    preset = "fmnist-cnn-s-hyp"     # optional; otherwise the defaults below
    models = 100
    epochs = 10

    [dataset]
    train_size = 10000              # the first 10,000 (already shuffled) training images

    [space]
    lr = [1e-3, 1e-4]

Every key is checked: an unknown key or a value of the wrong type or range raises
:class:`~sane.errors.ConfigError` naming the file and the key (:func:`sane.settings.from_table`).
The ranges are checked by each dataclass's ``__post_init__``, so they hold for configs built in
code too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sane.errors import ConfigError
from sane.settings import from_table, read_toml, require
from sane.zoo.architectures import ARCHITECTURES, ArchConfig, check_arch_value
from sane.zoo.storage import ModelEntry

OPTIMIZERS = ("adam", "sgd")
MODES = ("grid", "random")
TRAIN_METRICS = ("running", "eval")
# Images per training step of a group when group_size is not set (measured on a 2-core CPU:
# CNN-s trains fastest with 4 to 8 models at batch 64 and about 32 models at batch 10).
IMAGES_PER_STEP = 384
# Architecture settings that vary per model: they are set in [space], not in [architecture].
_SPACE_ARCH_KEYS = ("activation", "init", "dropout")


@dataclass(frozen=True)
class DataConfig:
    """Which data the models learn: arguments of :func:`sane.data.load_dataset`.

    ``size`` is the side images are resized to; ``None`` means the architecture's
    ``input_size`` (images of another side are resized, 1-D signals are left as they are).
    ``train_size`` keeps only the first ``train_size`` training images (the split is already
    shuffled, so they are a random subset); validation and test splits stay whole.
    """

    name: str = "digits"
    root: str | None = None
    size: int | None = None
    grayscale: bool = False
    val_fraction: float = 1 / 6
    seed: int = 0
    train_size: int | None = None

    def __post_init__(self) -> None:
        require(self.size is None or self.size >= 1, "size", "positive", self.size)
        require(0 < self.val_fraction < 1, "val_fraction", "in (0, 1)", self.val_fraction)
        require(self.train_size is None or self.train_size >= 1, "train_size", "positive",
                self.train_size)


@dataclass(frozen=True)
class SearchSpace:
    """The values each hyperparameter may take; seeds are the inclusive range ``seed_range``.

    ``optimizer`` is ``adam`` (torch's Adam, betas 0.9/0.999, eps 1e-8) or ``sgd`` (with the
    population's ``momentum``); ``weight_decay`` is an L2 term added to the gradient, as in
    ``torch.optim``. ``batch_size`` is the number of training images per step.
    ``architecture``, when set, lists architecture names the models are spread over (a mixed
    zoo, e.g. CNN-s beside the wider CNN-s); unset, every model has the population's
    ``[architecture]`` name.
    """

    seed_range: tuple[int, int] = (1, 1)
    activation: tuple[str, ...] = ("tanh",)
    init: tuple[str, ...] = ("uniform",)
    dropout: tuple[float, ...] = (0.0,)
    optimizer: tuple[str, ...] = ("adam",)
    lr: tuple[float, ...] = (3e-4,)
    weight_decay: tuple[float, ...] = (0.0,)
    batch_size: tuple[int, ...] = (10,)
    architecture: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        first, last = self.seed_range
        for name in self.architecture or ():
            require(name in ARCHITECTURES, "architecture", f"one of {sorted(ARCHITECTURES)}",
                    name)
        require(0 <= first <= last, "seed_range", "[first, last] with 0 <= first <= last",
                list(self.seed_range))
        for key in _SPACE_ARCH_KEYS:
            for value in getattr(self, key):
                check_arch_value(key, value)
        for name in self.optimizer:
            require(name in OPTIMIZERS, "optimizer", f"one of {list(OPTIMIZERS)}", name)
        for lr in self.lr:
            require(lr > 0, "lr", "positive values", lr)
        for wd in self.weight_decay:
            require(wd >= 0, "weight_decay", "non-negative values", wd)
        for batch in self.batch_size:
            require(batch >= 1, "batch_size", "positive values", batch)
        for key, values in self.axes.items():
            require(len(set(values)) == len(values), key, "a list without repeats", list(values))

    @property
    def axes(self) -> dict[str, tuple[Any, ...]]:
        """The hyperparameter lists in enumeration order (seed excluded; ``architecture``
        last, when set, so that a space without it enumerates as before it existed)."""
        keys = ("activation", "init", "dropout", "optimizer", "lr", "weight_decay", "batch_size")
        axes = {k: getattr(self, k) for k in keys}
        return axes | ({"architecture": self.architecture} if self.architecture else {})

    @property
    def num_seeds(self) -> int:
        return self.seed_range[1] - self.seed_range[0] + 1

    @property
    def size(self) -> int:
        """Number of distinct recipes: seeds times every combination of hyperparameters."""
        return self.num_seeds * math.prod(len(v) for v in self.axes.values())


@dataclass(frozen=True)
class PopulationConfig:
    """A population: ``models`` recipes drawn from ``space``, each trained for ``epochs``.

    ``mode = "grid"`` enumerates every recipe of the space (the seed varies fastest);
    ``models``, when set, keeps the first ``models`` of them. ``mode = "random"`` draws
    ``models`` distinct recipes uniformly from the space (all of them, in random order, when
    ``models`` is not set; ``sample_seed`` fixes the draw), so a small ``models`` still covers
    every hyperparameter. ``architecture`` fixes the
    architecture's shape; activation, init and dropout come from ``space``.

    ``train_metrics`` says how train loss and accuracy are measured: ``"running"`` averages
    them over the steps of the epoch while the model trains (dropout on; free, and what the
    Model Zoos record), ``"eval"`` makes an extra evaluation pass over the training images
    after the epoch (dropout off; about a third more compute, and comparable with validation
    and test). Epoch 0 (the initialization) is always an evaluation pass.

    ``workers`` processes train groups of at most ``group_size`` models side by side, each
    with ``threads`` CPU threads (one thread per process avoids thread synchronization, which
    costs most on a busy machine). ``group_size = None`` sizes groups for about
    :data:`IMAGES_PER_STEP` images per step (``IMAGES_PER_STEP / batch_size`` models, 1 to
    64): enough work per step to hide Python's overhead, little enough to stay in cache.
    ``threads`` and ``group_size`` change floating-point rounding, so a run resumes only with
    the values it started with; ``workers`` does not change any result and may differ
    between a run and its resumption.
    """

    dataset: DataConfig = field(default_factory=DataConfig)
    architecture: ArchConfig = field(default_factory=ArchConfig)
    space: SearchSpace = field(default_factory=SearchSpace)
    mode: str = "grid"
    models: int | None = None
    sample_seed: int = 0
    epochs: int = 10
    momentum: float = 0.9
    train_metrics: str = "running"
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    workers: int = 2
    threads: int = 1
    group_size: int | None = None

    def __post_init__(self) -> None:
        require(self.mode in MODES, "mode", f"one of {list(MODES)}", self.mode)
        require(self.train_metrics in TRAIN_METRICS, "train_metrics",
                f"one of {list(TRAIN_METRICS)}", self.train_metrics)
        size = self.space.size
        require(self.models is None or 1 <= self.models <= size, "models",
                f"between 1 and the {size} recipes of the space", self.models)
        for key in ("epochs", "workers", "threads"):
            require(getattr(self, key) >= 1, key, "positive", getattr(self, key))
        require(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        require(len(self.split) == 3 and all(f >= 0 for f in self.split)
                and math.isclose(sum(self.split), 1), "split",
                "three non-negative fractions summing to 1", list(self.split))
        require(self.group_size is None or self.group_size >= 1, "group_size", "positive",
                self.group_size)

    @property
    def num_models(self) -> int:
        return self.space.size if self.models is None else self.models

    def models_per_group(self, batch_size: int) -> int:
        """The most models trained together at ``batch_size`` (see ``group_size``)."""
        if self.group_size is not None:
            return self.group_size
        return min(64, max(1, round(IMAGES_PER_STEP / batch_size)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :func:`config_from_dict` turns back into this config."""
        d = dataclasses.asdict(self)
        d["architecture"] = self.architecture.to_dict()
        for key in _SPACE_ARCH_KEYS:
            del d["architecture"][key]
        if self.space.architecture is None:  # as written before mixed zoos existed
            del d["space"]["architecture"]
        return _lists(d)


@dataclass(frozen=True)
class Preset:
    """A named population with a one-line description."""

    description: str
    config: PopulationConfig


def _lists(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_lists(v) for v in obj]
    return obj


# -- presets -------------------------------------------------------------------------------

_MNIST_HYP = SearchSpace(
    seed_range=(1, 10),
    activation=("tanh", "relu", "sigmoid", "gelu"),
    init=("uniform", "normal", "kaiming_uniform", "kaiming_normal"),
    dropout=(0.0, 0.5),
    optimizer=("adam", "sgd"),
    lr=(1e-3, 1e-4),
    weight_decay=(1e-3, 1e-4),
    batch_size=(10,),
)
_MNIST_SEED = SearchSpace(seed_range=(1, 1000))


def _model_zoos(dataset: DataConfig, space: SearchSpace, mode: str = "grid",
                arch: ArchConfig | None = None) -> PopulationConfig:
    """A Model Zoos recipe: 50 epochs, validation 1/6 of the official training set."""
    return PopulationConfig(dataset=dataset, architecture=arch or ArchConfig(), space=space,
                            mode=mode, epochs=50)


_FMNIST = DataConfig(name="fashion-mnist")
_MNIST = DataConfig(name="mnist")

PRESETS: dict[str, Preset] = {
    "digits-cnn-s": Preset(
        "demo: 8 CNN-s on the embedded 8x8 digits resized to 28x28, 2 activations x 4 seeds, "
        "Adam 1e-3, batch 32, 5 epochs (seconds)",
        PopulationConfig(
            dataset=DataConfig(name="digits"),
            space=SearchSpace(seed_range=(1, 4), activation=("tanh", "relu"),
                              init=("kaiming_uniform",), lr=(1e-3,), batch_size=(32,)),
            epochs=5,
        ),
    ),
    "digits-cnn-s-seed": Preset(
        "demo seed zoo: 34 CNN-s on the embedded digits resized to 28x28 that differ only in "
        "their seed, relu, kaiming_uniform init, Adam 1e-3, batch 32, 5 epochs (seconds)",
        PopulationConfig(
            dataset=DataConfig(name="digits"),
            space=SearchSpace(seed_range=(1, 34), activation=("relu",),
                              init=("kaiming_uniform",), lr=(1e-3,), batch_size=(32,)),
            epochs=5,
        ),
    ),
    "digits-cnn-s-hyp": Preset(
        "CNN-s hyperparameter zoo on the embedded digits (resized to 28x28): 10 seeds x 3 "
        "activations x 2 inits x 2 learning rates, Adam, batch 32, 10 epochs, in random order "
        "(a zoo of 40 trains in under a minute)",
        PopulationConfig(
            dataset=DataConfig(name="digits"),
            space=SearchSpace(seed_range=(1, 10), activation=("tanh", "relu", "gelu"),
                              init=("uniform", "kaiming_uniform"), lr=(3e-3, 1e-3),
                              batch_size=(32,)),
            mode="random", epochs=10,
        ),
    ),
    "fmnist-cnn-s-seed": Preset(
        "Model Zoos Fashion-MNIST CNN-s seed zoo: 1000 seeds, tanh, uniform init, Adam 3e-4, "
        "batch 10, 50 epochs",
        _model_zoos(_FMNIST, _MNIST_SEED),
    ),
    "fmnist-cnn-s-seed-fast": Preset(
        "Fashion-MNIST CNN-s seed zoo that learns in a few epochs: the Model Zoos seed recipe "
        "(tanh, Adam, batch 10) with kaiming_uniform init and lr 1e-3 instead of U(0, 1) init "
        "and 3e-4, 10 epochs (about 0.79 test accuracy after 3 epochs on 10,000 images)",
        dataclasses.replace(_model_zoos(_FMNIST, dataclasses.replace(
            _MNIST_SEED, init=("kaiming_uniform",), lr=(1e-3,))), epochs=10),
    ),
    "fmnist-cnn-s-hyp": Preset(
        "Model Zoos Fashion-MNIST CNN-s hyperparameter zoo (fixed seeds 1-10): 2560 recipes in "
        "random order, so --models N draws N of them",
        _model_zoos(_FMNIST, _MNIST_HYP, mode="random"),
    ),
    "mnist-cnn-s-seed": Preset(
        "Model Zoos MNIST CNN-s seed zoo: 1000 seeds, tanh, uniform init, Adam 3e-4, batch 10, "
        "50 epochs",
        _model_zoos(_MNIST, _MNIST_SEED),
    ),
    "mnist-cnn-s-hyp": Preset(
        "Model Zoos MNIST CNN-s hyperparameter zoo (fixed seeds 1-10): 2560 recipes in random "
        "order",
        _model_zoos(_MNIST, _MNIST_HYP, mode="random"),
    ),
    "svhn-cnn-s-seed": Preset(
        "Model Zoos SVHN CNN-s seed zoo: grayscale, resized to 28x28 (Model Zoos crops), 1000 "
        "seeds, tanh, uniform init, Adam 3e-3, batch 10, 50 epochs",
        _model_zoos(DataConfig(name="svhn", grayscale=True),
                    dataclasses.replace(_MNIST_SEED, lr=(3e-3,))),
    ),
    "cifar10-cnn-l-seed": Preset(
        "Model Zoos CIFAR-10 CNN-l seed zoo: 1000 seeds, gelu, kaiming_uniform init, Adam 1e-4, "
        "weight decay 1e-2, batch 10, 50 epochs",
        _model_zoos(
            DataConfig(name="cifar10", val_fraction=0.16),
            SearchSpace(seed_range=(1, 1000), activation=("gelu",), init=("kaiming_uniform",),
                        lr=(1e-4,), weight_decay=(1e-2,)),
            arch=ArchConfig(name="cnn_l", in_channels=3, input_size=32),
        ),
    ),
    "mnist1d-cnn1d": Preset(
        "1-D CNNs on MNIST-1D: 100 seeds, relu, kaiming_uniform init, Adam 1e-3, batch 32, "
        "20 epochs",
        PopulationConfig(
            dataset=DataConfig(name="mnist1d"),
            architecture=ArchConfig(name="cnn1d", input_size=40),
            space=SearchSpace(seed_range=(1, 100), activation=("relu",),
                              init=("kaiming_uniform",), lr=(1e-3,), batch_size=(32,)),
            epochs=20,
        ),
    ),
}


# -- reading and checking --------------------------------------------------------------------

def load_config(source: str | Path, **overrides: Any) -> PopulationConfig:
    """Read a population config from a TOML file or a preset name, then apply ``overrides``.

    ``overrides`` are top-level keys (``models``, ``epochs``, ``threads``...) or
    ``train_size`` (the dataset's). A TOML file may name a ``preset`` to start from. The
    result is checked once, after every value is applied.
    """
    path = Path(source)
    if str(source) in PRESETS and not path.is_file():
        base, table, where = PRESETS[str(source)].config, {}, f"preset {source!r}"
    elif path.is_file():
        table, where = read_toml(path), str(path)
        base = PopulationConfig()
        if "preset" in table:
            name = table.pop("preset")
            if name not in PRESETS:
                raise ConfigError(
                    f"{path}: unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}"
                )
            base = PRESETS[name].config
    else:
        raise ConfigError(
            f"{source!r} is neither a TOML file nor a preset; presets: {', '.join(sorted(PRESETS))}"
        )
    for key, value in overrides.items():
        if key == "train_size":
            table["dataset"] = {**table.get("dataset", {}), "train_size": value}
        else:
            table[key] = value
    return _merge(base, table, where)


def config_from_dict(d: Mapping[str, Any], where: str = "config") -> PopulationConfig:
    """Build a config from a dict as :meth:`PopulationConfig.to_dict` writes it."""
    return _merge(PopulationConfig(), d, where)


def _merge(base: PopulationConfig, table: Mapping[str, Any], where: str) -> PopulationConfig:
    """``base`` with the values of ``table`` (nested like the TOML file), checked."""
    architecture = table.get("architecture") if isinstance(table, Mapping) else None
    for key in _SPACE_ARCH_KEYS if isinstance(architecture, Mapping) else ():
        if key in architecture:
            raise ConfigError(f"{where}: architecture.{key}: set it in [space] as a list "
                              f"(it varies per model)")
    return from_table(base, table, where)


# -- enumeration ---------------------------------------------------------------------------

def enumerate_models(config: PopulationConfig) -> list[ModelEntry]:
    """The population's model entries, ids ``m0000``, ``m0001``... in enumeration order.

    Each entry's ``training`` holds its recipe: ``optimizer``, ``lr``, ``weight_decay``,
    ``momentum`` (SGD only), ``batch_size``, ``epochs``.
    """
    space = config.space
    axes = list(space.axes.values())
    sizes = [space.num_seeds, *(len(a) for a in axes)]
    if config.mode == "grid":
        indices = range(config.num_models)
    else:
        rng = np.random.default_rng(config.sample_seed)
        indices = rng.choice(space.size, size=config.num_models, replace=False).tolist()
    width = max(4, len(str(config.num_models - 1)))
    entries = []
    for number, index in enumerate(indices):
        digits = _mixed_radix(int(index), sizes)  # seed varies fastest
        seed = space.seed_range[0] + digits[0]
        activation, init, dropout, optimizer, lr, wd, batch, *name = (
            a[d] for a, d in zip(axes, digits[1:]))
        arch = dataclasses.replace(config.architecture, activation=activation, init=init,
                                   dropout=dropout, name=name[0] if name else
                                   config.architecture.name)
        training = {"optimizer": optimizer, "lr": lr, "weight_decay": wd, "batch_size": batch,
                    "epochs": config.epochs}
        if optimizer == "sgd":
            training["momentum"] = config.momentum
        entries.append(ModelEntry(id=f"m{number:0{width}d}", seed=seed, architecture=arch,
                                  training=training))
    return entries


def _mixed_radix(index: int, sizes: list[int]) -> list[int]:
    """Digits of ``index`` with the first digit varying fastest."""
    digits = []
    for size in sizes:
        index, digit = divmod(index, size)
        digits.append(digit)
    return digits

