"""A trial's ``params.json`` in Model Zoos keys, and our architecture and recipe it stands for.

The ``model::`` keys give the :class:`ArchConfig` (``model::type`` names one of the Model Zoos
architectures or one of ours), the ``optim::`` and ``training::`` keys the training recipe
(``ModelEntry.training``). Whatever the Model Zoos keys cannot express (our own architectures
and widths, recipe entries without a Model Zoos key, the model id, split and dataset) travels in
``sane::`` keys of ``params.json``, so that an exported trial reads back as the same model.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from sane.errors import ConfigError, FormatError
from sane.zoo.architectures import ARCHITECTURES, ArchConfig
from sane.zoo.storage import ModelEntry

# Model Zoos' `model::type` names and the architecture each one is (same state-dict keys).
MODEL_TYPES = {"CNN": "cnn_s", "CNN3": "cnn_l", "Resnet18": "resnet18", "Resnet34": "resnet34"}
EXPORT_TYPES = {name: kind for kind, name in MODEL_TYPES.items()}
RESNETS = ("resnet18", "resnet34")
# The Model Zoos CNNs assume these image sides; ResNet weights do not depend on it.
INPUT_SIZES = {"cnn_s": 28, "cnn_l": 32, "resnet18": 32, "resnet34": 32}

# Recipe keys of params.json and their names in ModelEntry.training.
RECIPE_KEYS = {
    "optim::optimizer": "optimizer",
    "optim::lr": "lr",
    "optim::wd": "weight_decay",
    "optim::momentum": "momentum",
    "optim::nesterov": "nesterov",
    "optim::scheduler": "scheduler",
    "training::batchsize": "batch_size",
    "training::epochs_train": "epochs",
    "training::loss": "loss",
}
RECIPE_PARAMS = {name: key for key, name in RECIPE_KEYS.items()}

ARCH_PREFIX = "sane::architecture::"
TRAINING_PREFIX = "sane::training::"
ID_KEY, SPLIT_KEY, DATASET_KEY = "sane::id", "sane::split", "sane::dataset"
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def architecture_from_params(
    params: dict[str, Any], file: str | Path = "params.json"
) -> ArchConfig:
    """The architecture a Model Zoos ``params.json`` describes.

    ``model::type`` is a Model Zoos name (``CNN`` = CNN-s, ``CNN3`` = CNN-l, ``Resnet18``,
    ``Resnet34``) or one of our architecture names (as our export writes). As in the Model
    Zoos code, the CNNs always have 10 outputs (``model::o_dim`` is ignored there) and the
    ResNets use ReLU without dropout (``model::nlin`` and ``model::dropout`` are ignored
    there). ``sane::architecture::<field>`` keys override the result field by field.
    """
    kind = params.get("model::type")
    name = MODEL_TYPES.get(kind, kind) if isinstance(kind, str) else None
    if name not in ARCHITECTURES:
        raise FormatError(f"{file}: model::type {kind!r} is not supported; supported: "
                          f"{sorted(MODEL_TYPES)} and {sorted(ARCHITECTURES)}")
    fields: dict[str, Any] = {
        "name": name,
        "in_channels": _value(params, "model::channels_in", int, file),
        "init": _value(params, "model::init_type", str, file),
        "input_size": INPUT_SIZES.get(name, ArchConfig.input_size),
    }
    if kind in MODEL_TYPES and name in RESNETS:
        fields |= {"activation": "relu", "dropout": 0.0,
                   "num_classes": _value(params, "model::o_dim", int, file)}
    else:
        fields |= {"activation": _value(params, "model::nlin", str, file),
                   "dropout": float(_value(params, "model::dropout", (int, float), file))}
        fields["num_classes"] = (10 if kind in MODEL_TYPES
                                 else _value(params, "model::o_dim", int, file))
    overrides = {k[len(ARCH_PREFIX):]: v for k, v in params.items() if k.startswith(ARCH_PREFIX)}
    try:
        return ArchConfig.from_dict({**fields, **overrides}, f"{file}: architecture")
    except ConfigError as error:
        raise FormatError(str(error)) from error


def params_from_entry(
    entry: ModelEntry, split: str | None = None, dataset: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``params.json`` of ``entry``: Model Zoos keys plus ``sane::`` keys for the rest.

    :func:`architecture_from_params` of the result gives back ``entry.architecture`` exactly:
    the fields the Model Zoos keys do not determine are written as
    ``sane::architecture::<field>``.
    """
    arch = entry.architecture
    params: dict[str, Any] = {
        "model::type": EXPORT_TYPES.get(arch.name, arch.name),
        "model::channels_in": arch.in_channels,
        "model::o_dim": arch.num_classes,
        "model::nlin": arch.activation,
        "model::dropout": arch.dropout,
        "model::init_type": arch.init,
        "seed": entry.seed,
    }
    implied = architecture_from_params(params)
    full = arch.to_dict()
    for field in dataclasses.fields(ArchConfig):
        if getattr(arch, field.name) != getattr(implied, field.name):
            params[ARCH_PREFIX + field.name] = full[field.name]
    for name, value in entry.training.items():
        params[RECIPE_PARAMS.get(name, TRAINING_PREFIX + name)] = value
    params[ID_KEY] = entry.id
    if split is not None:
        params[SPLIT_KEY] = split
    if dataset is not None:
        params[DATASET_KEY] = dataset
        if isinstance(dataset.get("dump"), str):
            params["dataset::dump"] = dataset["dump"]
    return params


def entry_from_params(params: dict[str, Any], file: Path, default_id: str) -> ModelEntry:
    """The :class:`ModelEntry` a trial's ``params.json`` describes (``file`` names it in
    errors); ``default_id`` unless the params carry the id an export wrote."""
    model_id = params.get(ID_KEY, default_id)
    if not isinstance(model_id, str) or not SAFE_ID.fullmatch(model_id):
        raise FormatError(f"{file}: {ID_KEY} must be a name of letters, digits, '.', '_', '-'; "
                          f"got {model_id!r}")
    return ModelEntry(
        id=model_id,
        seed=_value(params, "seed", int, file),
        architecture=architecture_from_params(params, file),
        training=_recipe(params, file),
    )


def _recipe(params: dict[str, Any], file: Path) -> dict[str, Any]:
    recipe: dict[str, Any] = {}
    for key, value in params.items():
        if key in RECIPE_KEYS:
            name = RECIPE_KEYS[key]
        elif key.startswith(TRAINING_PREFIX):
            name = key[len(TRAINING_PREFIX):]
        else:
            continue
        if name in recipe:
            raise FormatError(f"{file}: recipe entry {name!r} is given twice")
        recipe[name] = value
    return recipe


def _value(params: dict[str, Any], key: str, kind: type | tuple[type, ...], file) -> Any:
    if key not in params:
        raise FormatError(f"{file}: missing key {key!r}")
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise FormatError(f"{file}: {key} must be {names}, got {value!r}")
    return value
