"""Embedding models from anywhere with a pretrained run: checkpoint files to one vector each.

A run directory holds the SANE and its tokenizer, so nothing of the zoo or the token store is
needed (:class:`sane.pipeline.Pipeline`): each checkpoint is aligned to the zoo's reference,
standardized, tokenized and encoded whole, as are random permutations of the aligned model;
each view's token latents are averaged, and those vectors averaged (:meth:`Pipeline.embed`).
Checkpoint files are read by :func:`sane.checkpoints.read_state_dict` (safetensors or PyTorch
files, never unpickling code; common wrappers unwrapped; half precision read as float32) and
checked by :func:`sane.checkpoints.check_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sane.checkpoints import check_weights, read_state_dict
from sane.downstream.features import PERMUTATIONS, FeatureSet
from sane.downstream.ood import OODReference
from sane.errors import FormatError
from sane.pipeline import Pipeline
from sane.weights.baselines import sw_layer


def embed_checkpoints(run: str | Path, paths: Sequence[str | Path], *, device: str = "cpu",
                      precision: str = "auto", permutations: int = PERMUTATIONS) -> np.ndarray:
    """Embeddings ``[len(paths), d_z]`` float64 of checkpoint files with the SANE and tokenizer
    saved in the run directory ``run``, computed on ``device`` in ``precision``
    (:meth:`Pipeline.from_pretrained`) and averaged over ``permutations`` random permutations
    (:meth:`Pipeline.embed`); a checkpoint that does not fit is named in the error."""
    pipe = Pipeline.from_pretrained(run, device=device, precision=precision)
    return pipe.embed(read_fitting(pipe, paths), permutations=permutations)


def read_fitting(pipe: Pipeline, paths: Sequence[str | Path]) -> list[dict[str, torch.Tensor]]:
    """The state dicts in ``paths`` (:func:`read_state_dict`), each checked to hold usable
    weights (:func:`check_weights`) that fit one of ``pipe``'s tokenizers (errors name the
    file)."""
    if not paths:
        raise FormatError("give at least one checkpoint to embed")
    states = []
    for path in paths:
        state = read_state_dict(path)
        check_weights(state, path)
        try:
            pipe.tokenizer(state)
        except FormatError as error:
            raise FormatError(f"{path}: {error}") from error
        states.append(state)
    return states


def ood_flags(reference: OODReference, pipe: Pipeline, states: Sequence[dict[str, torch.Tensor]],
              embeddings: np.ndarray) -> list[dict[str, Any]]:
    """:meth:`OODReference.flags` of checkpoints ``states`` whose embeddings are
    ``embeddings [B, d_z]``: their per-layer weight statistics computed one at a time, in the
    tokenizer's canonical order, when the reference holds them."""
    queries = {FeatureSet.SANE: embeddings}
    if FeatureSet.SW_LAYER in reference.features:
        rows = []
        for state in states:
            tokenizer = pipe.tokenizer(state)
            rows.append(sw_layer([tokenizer.canonical(state)],
                                 include_batchnorm=tokenizer.manifest.include_batchnorm))
        queries[FeatureSet.SW_LAYER] = np.concatenate(rows)
    return reference.flags(queries)
