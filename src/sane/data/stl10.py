"""STL-10 (Coates et al., 2011), labelled part, from the official binary version.

``stl10_binary.tar.gz`` unpacks to ``stl10_binary/`` with ``train_X.bin`` (5,000 images),
``train_y.bin``, ``test_X.bin`` (8,000) and ``test_y.bin``; the unlabelled images are not used.
An image is 3 × 96 × 96 bytes: the red, green and blue planes, each stored column by column
(MATLAB order), so a plane read row-major comes out transposed. A label file holds one byte
per image, 1..10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sane.data.dataset import RawImages
from sane.errors import DatasetNotFoundError, FormatError

_FOLDER = "stl10_binary"
_SIDE = 96
_IMAGE_BYTES = 3 * _SIDE * _SIDE
_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def _folder(root: str | Path) -> Path | None:
    """The folder holding all files: ``root/stl10_binary`` or ``root`` itself."""
    root = Path(root)
    for folder in (root / _FOLDER, root):
        if all((folder / name).is_file() for name in _FILES):
            return folder
    return None


def _read_bytes(path: Path, unit: int, what: str) -> np.ndarray:
    """The file as uint8 ``[N, unit]``; its size must be a positive multiple of ``unit``."""
    try:
        size = path.stat().st_size
        if size == 0 or size % unit:
            raise FormatError(f"{path}: expected whole {what} of {unit} bytes, got {size} bytes")
        return np.fromfile(path, dtype=np.uint8).reshape(-1, unit)
    except OSError as error:
        raise FormatError(f"{path}: cannot read ({error})") from error


def read_stl10_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``<split>_X.bin`` and ``<split>_y.bin``: images ``[N, 3, 96, 96]`` uint8 (rows
    top to bottom) and labels ``[N]`` int64 in 0..9."""
    folder = Path(folder)
    images_path, labels_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    images = _read_bytes(images_path, _IMAGE_BYTES, "images")
    labels = _read_bytes(labels_path, 1, "labels")[:, 0].astype(np.int64)
    if len(labels) != len(images):
        raise FormatError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}"
        )
    if labels.min() < 1 or labels.max() > 10:
        raise FormatError(
            f"{labels_path}: labels must lie in 1..10, found [{labels.min()}, {labels.max()}]"
        )
    # Row-major reading yields [N, C, W, H]: swap the last two axes to get [N, C, H, W].
    planes = images.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(planes), labels - 1


def has_stl10_files(root: str | Path) -> bool:
    return _folder(root) is not None


def read_stl10(root: str | Path) -> RawImages:
    """STL-10 from ``root/stl10_binary`` or ``root``: 5,000 train, 8,000 test images of 96×96.

    Normalization constants (0.5, 0.5, 0.5) for mean and std, as in the Model Zoos generators.
    """
    folder = _folder(root)
    if folder is None:
        raise DatasetNotFoundError(
            f"stl10: {', '.join(_FILES)} not all found in {Path(root) / _FOLDER} and {root}"
        )
    train_x, train_y = read_stl10_split(folder, "train")
    test_x, test_y = read_stl10_split(folder, "test")
    return RawImages(
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, num_classes=10,
        source=str(folder), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    )
