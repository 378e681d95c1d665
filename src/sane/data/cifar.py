"""CIFAR-10 and CIFAR-100 from their official binary versions (Krizhevsky, 2009).

CIFAR-10 (``cifar-10-binary.tar.gz`` unpacks to ``cifar-10-batches-bin/``): ``data_batch_1.bin``
to ``data_batch_5.bin`` (10,000 images each) and ``test_batch.bin`` (10,000). Each record is one
label byte followed by 3,072 pixel bytes: the red, green and blue planes of a 32×32 image, each
plane row by row.

CIFAR-100 (``cifar-100-binary.tar.gz`` unpacks to ``cifar-100-binary/``): ``train.bin`` (50,000)
and ``test.bin`` (10,000). Each record is a coarse-label byte (20 superclasses), a fine-label
byte (100 classes, the ones used here), then the same 3,072 pixel bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sane.data.dataset import RawImages
from sane.errors import DatasetNotFoundError, FormatError

_IMAGE_SHAPE = (3, 32, 32)
_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class _Layout:
    folder: str  # the folder the official archive unpacks to
    train: tuple[str, ...]
    test: str
    label_bytes: int  # bytes before the pixels of each record
    label_index: int  # which of those bytes is the label used
    num_classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test)


_CIFAR10 = _Layout(
    folder="cifar-10-batches-bin",
    train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test="test_batch.bin",
    label_bytes=1, label_index=0, num_classes=10,
)
_CIFAR100 = _Layout(
    folder="cifar-100-binary", train=("train.bin",), test="test.bin",
    label_bytes=2, label_index=1, num_classes=100,
)


def _folder(root: str | Path, layout: _Layout) -> Path | None:
    """The folder holding all files: ``root/<official folder>`` or ``root`` itself."""
    root = Path(root)
    for folder in (root / layout.folder, root):
        if all((folder / name).is_file() for name in layout.files):
            return folder
    return None


def _read_records(path: str | Path, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR binary file: images ``[N, 3, 32, 32]`` uint8 and labels ``[N]`` int64."""
    path = Path(path)
    record = layout.label_bytes + _PIXELS
    try:
        size = path.stat().st_size
        if size == 0 or size % record:
            raise FormatError(
                f"{path}: expected a whole number of {record}-byte records "
                f"({layout.label_bytes} label byte(s) + {_PIXELS} pixels), got {size} bytes"
            )
        data = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    except OSError as error:
        raise FormatError(f"{path}: cannot read ({error})") from error
    labels = data[:, layout.label_index].astype(np.int64)
    if labels.max() >= layout.num_classes:
        raise FormatError(
            f"{path}: labels must lie in [0, {layout.num_classes}), found {labels.max()}"
        )
    return data[:, layout.label_bytes :].reshape(-1, *_IMAGE_SHAPE), labels


def _read(
    root: str | Path,
    layout: _Layout,
    name: str,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> RawImages:
    folder = _folder(root, layout)
    if folder is None:
        tried = f"{Path(root) / layout.folder} and {root}"
        raise DatasetNotFoundError(f"{name}: {', '.join(layout.files)} not all found in {tried}")
    train = [_read_records(folder / file, layout) for file in layout.train]
    test_x, test_y = _read_records(folder / layout.test, layout)
    return RawImages(
        train_x=np.concatenate([x for x, _ in train]),
        train_y=np.concatenate([y for _, y in train]),
        test_x=test_x, test_y=test_y, num_classes=layout.num_classes, source=str(folder),
        mean=mean, std=std,
    )


def has_cifar10_files(root: str | Path) -> bool:
    return _folder(root, _CIFAR10) is not None


def has_cifar100_files(root: str | Path) -> bool:
    return _folder(root, _CIFAR100) is not None


def read_cifar10(root: str | Path) -> RawImages:
    """CIFAR-10 from ``root/cifar-10-batches-bin`` or ``root``: 50,000 train, 10,000 test.

    Normalization constants (0.5, 0.5, 0.5) for mean and std, as in the Model Zoos generators.
    """
    return _read(root, _CIFAR10, "cifar10", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def read_cifar100(root: str | Path) -> RawImages:
    """CIFAR-100 (fine labels) from ``root/cifar-100-binary`` or ``root``.

    Normalized with the statistics of the training split.
    """
    return _read(root, _CIFAR100, "cifar100", mean=None, std=None)
