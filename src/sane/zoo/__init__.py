"""Model zoos: architectures, population training, storage, Model Zoos import/export."""

from sane.zoo.architectures import ARCHITECTURES, ArchConfig, build_model
from sane.zoo.config import PRESETS, PopulationConfig, load_config
from sane.zoo.generate import train_population
from sane.zoo.modelzoos.reader import import_modelzoos
from sane.zoo.modelzoos.writer import export_modelzoos
from sane.zoo.storage import ModelEntry, Zoo

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "ArchConfig",
    "ModelEntry",
    "PopulationConfig",
    "Zoo",
    "build_model",
    "export_modelzoos",
    "import_modelzoos",
    "load_config",
    "train_population",
]
