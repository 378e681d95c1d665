"""The named datasets and where their files are looked for.

``load_dataset(name, root)`` reads from ``root`` when given; otherwise from
``$SANE_DATA_DIR/<name>`` when that variable is set, then from the dataset's default
locations (for Fashion-MNIST, where the Debian package ``dataset-fashion-mnist`` installs it).
A dataset that is not found raises :class:`~sane.errors.DatasetNotFoundError` naming every
path tried and how to provide the data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sane.data.cifar import has_cifar10_files, has_cifar100_files, read_cifar10, read_cifar100
from sane.data.dataset import Dataset, RawImages, assemble
from sane.data.digits import read_digits
from sane.data.idx import has_idx_files, read_idx_dataset
from sane.data.mnist1d import read_mnist1d
from sane.data.stl10 import has_stl10_files, read_stl10
from sane.data.svhn import has_svhn_files, read_svhn
from sane.errors import ConfigError, DatasetNotFoundError


@dataclass(frozen=True)
class DatasetSpec:
    """How to find and read one dataset (add new datasets to :data:`DATASETS`).

    ``read(root)`` returns the raw arrays (``root`` is None for embedded or generated data);
    ``found(root)`` says whether ``root`` holds the files; ``defaults`` are tried after
    ``root`` and ``$SANE_DATA_DIR/<name>``; ``how`` tells a user how to get the files.
    """

    read: Callable[[Path | None], RawImages]
    found: Callable[[Path], bool] | None = None
    defaults: tuple[str, ...] = ()
    how: str = ""


def _digits(_root: Path | None) -> RawImages:
    return read_digits()


def _mnist1d(_root: Path | None) -> RawImages:
    return read_mnist1d()


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(read=_digits),
    "mnist1d": DatasetSpec(read=_mnist1d),
    # Normalization constants as in the Model Zoos generators.
    "fashion-mnist": DatasetSpec(
        read=partial(read_idx_dataset, mean=0.5, std=0.5), found=has_idx_files,
        defaults=("/usr/share/datasets/fashion-mnist",),
        how="install the Debian package dataset-fashion-mnist, or put "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        "and t10k-labels-idx1-ubyte.gz in ROOT",
    ),
    "mnist": DatasetSpec(
        read=partial(read_idx_dataset, mean=0.1307, std=0.3081), found=has_idx_files,
        how="put the four MNIST IDX files (train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) "
        "in ROOT",
    ),
    "cifar10": DatasetSpec(
        read=read_cifar10, found=has_cifar10_files,
        how="download the binary version cifar-10-binary.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it in ROOT, giving "
        "ROOT/cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin and test_batch.bin",
    ),
    "cifar100": DatasetSpec(
        read=read_cifar100, found=has_cifar100_files,
        how="download the binary version cifar-100-binary.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it in ROOT, giving "
        "ROOT/cifar-100-binary/train.bin and test.bin",
    ),
    "svhn": DatasetSpec(
        read=read_svhn, found=has_svhn_files,
        how="download the cropped digits train_32x32.mat and test_32x32.mat from "
        "http://ufldl.stanford.edu/housenumbers/ into ROOT",
    ),
    "stl10": DatasetSpec(
        read=read_stl10, found=has_stl10_files,
        how="download the binary version stl10_binary.tar.gz from "
        "https://cs.stanford.edu/~acoates/stl10/ and unpack it in ROOT, giving "
        "ROOT/stl10_binary/train_X.bin, train_y.bin, test_X.bin and test_y.bin",
    ),
}


def _resolve_root(name: str, spec: DatasetSpec, root: str | Path | None) -> Path | None:
    if spec.found is None:
        if root is not None:
            raise ConfigError(f"dataset {name!r} is embedded or generated; it takes no root")
        return None
    candidates = [Path(root)] if root is not None else []
    if root is None:
        if env := os.environ.get("SANE_DATA_DIR"):
            candidates.append(Path(env) / name)
        candidates += [Path(d) for d in spec.defaults]
    for candidate in candidates:
        if candidate.is_dir() and spec.found(candidate):
            return candidate
    tried = ", ".join(str(c) for c in candidates) or "(none: no root given, SANE_DATA_DIR unset)"
    raise DatasetNotFoundError(
        f"dataset {name!r} not found; tried {tried}. To provide it: {spec.how}, where ROOT is "
        f"the directory passed as root (--root), or else $SANE_DATA_DIR/{name}"
    )


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    size: int | None = None,
    grayscale: bool = False,
    val_fraction: float = 1 / 6,
    seed: int = 0,
) -> Dataset:
    """Load dataset ``name`` split into train/validation/test, normalized per channel.

    ``size`` resizes images to ``size × size`` (bilinear, antialiased), ``grayscale`` converts
    RGB to one channel; ``seed`` fixes the split. See :func:`sane.data.dataset.assemble`.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    raw = spec.read(_resolve_root(name, spec, root))
    return assemble(raw, name, size=size, grayscale=grayscale, val_fraction=val_fraction, seed=seed)
