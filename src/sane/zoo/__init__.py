"""Model zoos: architectures, population training, storage, Model Zoos import/export."""

from sane.zoo.architectures import ARCHITECTURES, ArchConfig, build_model
from sane.zoo.storage import ModelEntry, Zoo

__all__ = ["ARCHITECTURES", "ArchConfig", "ModelEntry", "Zoo", "build_model"]
