"""Embedding models from anywhere with a pretrained run: checkpoint files to one vector each.

A run directory holds the SANE and its tokenizer (:class:`sane.weights.tokenizer.Tokenizer`),
so nothing of the zoo or the token store is needed: each checkpoint is aligned to the zoo's
reference, standardized, tokenized and encoded whole (haloed); its token latents are averaged.
Checkpoint files are safetensors or PyTorch files read with ``weights_only=True``.
"""

from __future__ import annotations

import pickle  # only for its exception type: nothing is unpickled here
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sane.errors import FormatError
from sane.model import SANE
from sane.weights.tokenizer import Tokenizer


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: ``.safetensors``, or a PyTorch file holding a state dict
    (loaded with ``weights_only=True``, never unpickling arbitrary objects)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, SafetensorError, ValueError,
            pickle.UnpicklingError) as error:
        raise FormatError(f"{path}: not a safetensors or weights-only PyTorch file "
                          f"({error})") from error
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise FormatError(f"{path}: expected a state dict (names to tensors)")
    return state


def embed_states(model: SANE, tokenizer: Tokenizer, states: Sequence[dict[str, torch.Tensor]],
                 *, names: Sequence[str] | None = None) -> np.ndarray:
    """``[len(states), d_z]`` float64 embeddings; ``names`` label errors (default: index)."""
    tokens = []
    for i, state in enumerate(states):
        try:
            tokens.append(tokenizer.encode(state))
        except FormatError as error:
            raise FormatError(f"{names[i] if names else f'model {i}'}: {error}") from error
    positions = tokenizer.manifest.positions()
    with torch.no_grad():
        return model.eval().embed(torch.stack(tokens), positions).double().numpy()


def embed_checkpoints(run: str | Path, paths: Sequence[str | Path]) -> np.ndarray:
    """Embeddings ``[len(paths), d_z]`` of checkpoint files with the SANE and tokenizer saved
    in the run directory ``run``."""
    if not paths:
        raise FormatError("give at least one checkpoint to embed")
    model, tokenizer = SANE.from_pretrained(run), Tokenizer.from_pretrained(run)
    return embed_states(model, tokenizer, [read_checkpoint(p) for p in paths],
                        names=[str(p) for p in paths])
