"""Atomic file writes: a temporary file in the target's directory, fsync, then rename.

A reader (or a resumed job after a crash) therefore sees either the old file or the complete
new one, never a partial write. :func:`read_json` is the checked counterpart of
:func:`write_json`, :func:`read_manifest` also checks a manifest's format and version, and
:func:`read_array` is the checked counterpart of :func:`save_array`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON; NaN and infinity are rejected."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON value in ``path``; :class:`~sane.errors.FormatError` naming the file if it
    cannot be read or parsed."""
    from sane.errors import FormatError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(f"{path}: not valid JSON ({error})") from error


def read_manifest(path: str | Path, format: str, version: int) -> dict[str, Any]:
    """The JSON object in ``path`` once its ``format`` and ``version`` fields say it is a
    ``format`` file this sane reads; :class:`~sane.errors.FormatError` naming the file
    otherwise."""
    from sane.errors import FormatError

    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise FormatError(f"{path}: expected a JSON object")
    if manifest.get("format") != format:
        raise FormatError(f"{path}: format is {manifest.get('format')!r}, expected {format!r}")
    if manifest.get("version") != version:
        raise FormatError(f"{path}: {format} version {manifest.get('version')!r} is not "
                          f"supported (this sane reads version {version})")
    return manifest


def save_array(path: str | Path, array: Any) -> None:
    """Atomically save a numpy array as ``.npy`` (no pickled objects)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a path
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write)


def read_array(path: str | Path, *, mmap: bool = False) -> Any:
    """The numpy array in the ``.npy`` file ``path`` (a read-only memory map with ``mmap``),
    never unpickling Python objects; :class:`~sane.errors.FormatError` naming the file if it
    holds anything else."""
    import numpy as np

    from sane.errors import FormatError

    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as error:
        raise FormatError(f"{path}: unreadable .npy array ({error})") from error
    if magic != b"\x93NUMPY":
        raise FormatError(f"{path}: not a .npy array file")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        # numpy's message about object arrays advises loading them unsafely: not here
        reason = ("it holds Python objects" if "allow_pickle" in str(error)
                  else str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise FormatError(f"{path}: unreadable .npy array ({reason})") from error


def save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Atomically save ``tensors`` as a safetensors file.

    Each tensor is copied to contiguous CPU memory first, so views that share storage (which
    safetensors refuses) are saved as independent tensors.
    """
    from safetensors.torch import save_file

    data = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=dict(metadata or {})))
