"""Image-classification datasets as tensors with a seeded train/validation/test split."""

from sane.data.catalog import DATASETS, load_dataset
from sane.data.dataset import Dataset, Split

__all__ = ["DATASETS", "Dataset", "Split", "load_dataset"]
