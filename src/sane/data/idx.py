"""MNIST and Fashion-MNIST from IDX files (gzip-compressed or raw).

IDX format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, one big-endian uint32 per dimension,
then the values in big-endian C order.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from sane.data.dataset import RawImages
from sane.errors import DatasetNotFoundError, FormatError

_NUM_CLASSES = 10  # MNIST and Fashion-MNIST alike
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}

# Official file stems; a reader accepts ``stem``, ``stem.gz`` and the ``train-images.idx3-ubyte``
# spelling some mirrors use.
_STEMS = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` is decompressed) into a native-endian array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:  # zlib.error: corrupt compressed data
        raise FormatError(f"{path}: cannot read IDX file ({error})") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise FormatError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FormatError(f"{path}: IDX header truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_TYPES[data[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise FormatError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes) "
            f"but the file holds {len(data)} bytes"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype)
    if code is None:
        raise FormatError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.astype(np.dtype(_TYPES[code])).tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def _find(root: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        if (root / name).is_file():
            return root / name
    return None


def has_idx_files(root: Path) -> bool:
    return all(_find(root, stem) is not None for stem in _STEMS.values())


def read_idx_dataset(root: Path, *, mean: float | None, std: float | None) -> RawImages:
    """Read the four official IDX files of an MNIST-style dataset from ``root``."""
    paths = {}
    for key, stem in _STEMS.items():
        path = _find(root, stem)
        if path is None:
            raise DatasetNotFoundError(f"{root}: missing {stem}[.gz]")
        paths[key] = path
    arrays = {}
    for split in ("train", "test"):
        x_path, y_path = paths[f"{split}_x"], paths[f"{split}_y"]
        x, y = read_idx(x_path), read_idx(y_path)
        if x.ndim != 3:
            raise FormatError(f"{x_path}: images must be [N, H, W], got shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise FormatError(f"{y_path}: expected [{len(x)}] labels, got shape {y.shape}")
        if len(y) and (y.min() < 0 or y.max() >= _NUM_CLASSES):
            raise FormatError(
                f"{y_path}: labels must lie in [0, {_NUM_CLASSES}), found [{y.min()}, {y.max()}]"
            )
        arrays[split] = (x[:, None], y.astype(np.int64))
    return RawImages(
        train_x=arrays["train"][0], train_y=arrays["train"][1],
        test_x=arrays["test"][0], test_y=arrays["test"][1],
        num_classes=_NUM_CLASSES, source=str(root),
        mean=None if mean is None else (mean,), std=None if std is None else (std,),
    )
