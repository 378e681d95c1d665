"""Reading state-dict files that someone else wrote: the one reader of checkpoint files.

:func:`read_state_dict` takes a safetensors file or a PyTorch file written by ``torch.save``
(recognized by their first bytes, whatever the file's name), loads PyTorch files with
``torch.load(weights_only=True)``, so that nothing in a file is ever run, and unwraps the
usual containers: ``{"state_dict": ...}``, ``{"model": ...}`` (beside an optimizer, an epoch
...) and the ``module.`` prefix that ``DistributedDataParallel`` puts on every key.
Floating-point tensors come back as float32, the precision everything here computes in, so
float16 and bfloat16 checkpoints are read like any other. Whatever goes wrong becomes one
:class:`~sane.errors.FormatError` naming the file and what was expected.

:func:`check_weights` refuses weights no computation here can use: NaN, infinity, or
magnitudes above ``max_abs`` (:data:`MAX_ABS` unless a caller sets a lower bound:
:func:`weight_limit`).
"""

from __future__ import annotations

import pickle  # only for its exception type: nothing is unpickled here
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from sane.errors import FormatError

# Weights of 1e30 standardize to tokens whose squares overflow float32 inside the SANE (from
# about 1.8e19 on). No trained network comes near 1e8 (the Model Zoos ResNets reach 2.5e4),
# and standardized by any realistic layer spread, weights below it stay far from overflow.
MAX_ABS = 1e8
WRAPPERS = ("state_dict", "model")  # keys under which a state dict is commonly saved
DDP_PREFIX = "module."
EXPECTED = "expected a state dict: a safetensors file or a PyTorch file saved by torch.save"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in the file ``path``, unwrapped, floating tensors as float32 (see the
    module docstring); :class:`FormatError` naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: checkpoint not found ({EXPECTED})")
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise FormatError(f"{path}: empty file; {EXPECTED}")
    if head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        loaded = _read_safetensors(path)
    elif head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip archive, or a pickle
        loaded = _read_torch(path)
    else:
        raise FormatError(f"{path}: not a checkpoint ({_looks_like(head)}); {EXPECTED}")
    state = _unwrapped(loaded, path)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def check_weights(state: Mapping[str, torch.Tensor], path: str | Path,
                  max_abs: float = MAX_ABS) -> None:
    """:class:`FormatError` naming ``path`` and the entry unless every floating-point entry of
    ``state`` is finite and at most ``max_abs`` in magnitude (integer entries, such as
    batch-norm counters, are counts, not weights)."""
    for key, tensor in state.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if not torch.isfinite(tensor).all():
            raise FormatError(f"{path}: {key} holds NaN or infinite values; expected the "
                              "finite weights of a trained network")
        largest = tensor.abs().max().item()
        if largest > max_abs:
            raise FormatError(f"{path}: {key} has |w| = {largest:.4g} > max_abs = {max_abs:g}; "
                              "expected the weights of a trained network, which float32 "
                              "computes without overflow")


def weight_limit(max_abs: float | None) -> float:
    """The largest magnitude a used weight may have: ``max_abs`` when given, never above
    :data:`MAX_ABS`."""
    return MAX_ABS if max_abs is None else min(max_abs, MAX_ABS)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise FormatError(f"{path}: unreadable checkpoint: a safetensors file that is "
                          f"truncated or corrupt ({_one_line(error)})") from error


def _read_torch(path: Path) -> object:
    try:
        with open(path, "rb") as f:  # a file object: torch reads some names as safetensors
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as error:  # untrusted bytes fail in many ways, none of them ours
        if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
            raise FormatError(f"{path}: refused by weights-only loading, nothing in it was "
                              f"run: it holds Python objects, not only tensors "
                              f"({_one_line(error)}); save the model's state_dict() instead"
                              ) from error
        raise FormatError(f"{path}: unreadable checkpoint: a PyTorch file that is truncated "
                          f"or corrupt ({_one_line(error)})") from error


def _unwrapped(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``loaded``: itself, or found under :data:`WRAPPERS`, its keys without
    a ``module.`` prefix that all of them share."""
    while isinstance(loaded, Mapping) and not _is_state_dict(loaded):
        inner = next((loaded[k] for k in WRAPPERS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not (isinstance(loaded, Mapping) and _is_state_dict(loaded)):
        raise FormatError(f"{path}: expected a state dict (names to tensors), or one under "
                          f"{' or '.join(map(repr, WRAPPERS))}; got {_describe(loaded)}")
    if not loaded:
        raise FormatError(f"{path}: the state dict holds no tensors")
    if all(k.startswith(DDP_PREFIX) for k in loaded):
        return {k[len(DDP_PREFIX):]: v for k, v in loaded.items()}
    return dict(loaded)


def _is_state_dict(value: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        keys = [str(k) for k in list(value)[:4]]
        return f"a dict with keys {keys}" + (" ..." if len(value) > 4 else "")
    return f"a {type(value).__name__}"


def _looks_like(head: bytes) -> str:
    """What a file that is no checkpoint seems to hold, from its first bytes ``head``."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown binary content"
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "unknown content"


def _one_line(error: Exception) -> str:
    """The informative line of a library's (possibly long, multi-line) error message, without
    its advice: torch's advice to load without ``weights_only`` is not for untrusted files."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = text.strip().split(". ")[0]
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and "weights_only" not in line]
    return lines[0][:200] if lines else type(error).__name__
