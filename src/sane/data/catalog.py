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
from pathlib import Path

from sane.data.dataset import Dataset, RawImages, assemble
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


def _idx(mean: float | None, std: float | None) -> Callable[[Path | None], RawImages]:
    def read(root: Path | None) -> RawImages:
        from sane.data.idx import read_idx_dataset

        assert root is not None
        return read_idx_dataset(root, mean=mean, std=std)

    return read


def _idx_found(root: Path) -> bool:
    from sane.data.idx import has_idx_files

    return has_idx_files(root)


def _digits(_root: Path | None) -> RawImages:
    from sane.data.digits import read_digits

    return read_digits()


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(read=_digits),
    # Normalization constants as in the Model Zoos generators.
    "fashion-mnist": DatasetSpec(
        read=_idx(0.5, 0.5), found=_idx_found,
        defaults=("/usr/share/datasets/fashion-mnist",),
        how="install the Debian package dataset-fashion-mnist, or pass the directory holding "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        "and t10k-labels-idx1-ubyte.gz",
    ),
    "mnist": DatasetSpec(
        read=_idx(0.1307, 0.3081), found=_idx_found,
        how="pass the directory holding the four MNIST IDX files (train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])",
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
        f"dataset {name!r} not found; tried {tried}. To provide it: {spec.how}"
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
