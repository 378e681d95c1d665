"""SVHN, cropped digits (Netzer et al., 2011), from the official MATLAB files.

``train_32x32.mat`` (73,257 images) and ``test_32x32.mat`` (26,032) are MATLAB v5 files with
two variables: ``X``, uint8 ``[32, 32, 3, N]`` (height, width, RGB, image), and ``y``, ``[N, 1]``
labels 1..10 where 10 stands for the digit 0. The optional ``extra_32x32.mat`` is not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sane.data.dataset import RawImages
from sane.errors import DatasetNotFoundError, FormatError

_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def has_svhn_files(root: str | Path) -> bool:
    return all((Path(root) / name).is_file() for name in _FILES.values())


def read_svhn_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN ``.mat`` file: images ``[N, 3, 32, 32]`` uint8, labels ``[N]`` int64 (0..9)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = Path(path)
    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except NotImplementedError as error:  # scipy raises this for MATLAB v7.3 (HDF5) files
        raise FormatError(f"{path}: MATLAB v7.3 files are not supported; expected v5") from error
    except (OSError, ValueError, MatReadError) as error:
        raise FormatError(f"{path}: not a readable MATLAB v5 file ({error})") from error
    if "X" not in mat or "y" not in mat:
        found = sorted(key for key in mat if not key.startswith("__"))  # skip loadmat's header
        raise FormatError(f"{path}: expected variables X and y, found {found}")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise FormatError(f"{path}: X must be uint8 [32, 32, 3, N], got {x.dtype} {list(x.shape)}")
    y = y.reshape(-1)
    if len(y) != x.shape[3]:
        raise FormatError(f"{path}: {x.shape[3]} images but {len(y)} labels")
    if len(y) == 0 or not np.isin(y, np.arange(1, 11)).all():
        raise FormatError(f"{path}: labels must be the integers 1..10 (10 is the digit 0)")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # -> [N, RGB, height, width]
    return images, y.astype(np.int64) % 10


def read_svhn(root: str | Path) -> RawImages:
    """SVHN from ``root/train_32x32.mat`` and ``root/test_32x32.mat``.

    Normalization constants (0.5, 0.5, 0.5) for mean and std, as in the Model Zoos generators.
    """
    root = Path(root)
    if not has_svhn_files(root):
        files = " and ".join(_FILES.values())
        raise DatasetNotFoundError(f"svhn: {files} not both found in {root}")
    train_x, train_y = read_svhn_file(root / _FILES["train"])
    test_x, test_y = read_svhn_file(root / _FILES["test"])
    return RawImages(
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, num_classes=10,
        source=str(root), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    )
