"""A tokenizer fitted on a zoo: :func:`fit_zoo` picks the zoo's usable checkpoints, aligns its
models and fits a :class:`~sane.weights.tokenizer.Tokenizer` on the training split, and
returns the checkpoints it selected, which :func:`sane.weights.store.prepare_store` then
tokenizes.

(1) The token layout from the zoo's shared parameter layout (:mod:`sane.zoo.layout`);
(2) with ``align``, weight matching of every model to one reference
(:mod:`sane.weights.align`); (3) per-tensor standardization fitted on the training split's
usable checkpoints only: finite, and with no tokenized weight above ``max_abs`` when set, nor
above :data:`sane.checkpoints.MAX_ABS` (the largest weight any computation here accepts) in
any case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sane.checkpoints import weight_limit
from sane.errors import ConfigError, FormatError
from sane.weights.align import Alignment, align_zoo
from sane.weights.manifest import TokenManifest
from sane.weights.permutations import permutation_spec
from sane.weights.tokenize import make_manifest
from sane.weights.tokenizer import Tokenizer
from sane.zoo.architectures import build_model
from sane.zoo.layout import ZooLayout, zoo_layout
from sane.zoo.storage import Zoo


@dataclass(frozen=True)
class ZooFit:
    """A tokenizer fitted on a zoo, with what it was fitted from: the zoo's ``layout``, its
    ``alignment`` (None unless aligned), the usable ``rows`` ``(model, epoch, split)`` of
    every split (split, then id, then epoch order) and the numbers of checkpoints left out
    (``skipped``: ``non_finite``, ``above_max_abs``)."""

    zoo: Zoo
    tokenizer: Tokenizer
    layout: ZooLayout
    alignment: Alignment | None
    rows: list[tuple[str, int, str]]
    skipped: dict[str, int]

    def load(self, model_id: str, epoch: int) -> dict[str, torch.Tensor]:
        """A checkpoint under the canonical keys, aligned when the zoo is (raw weights)."""
        return _loader(self.zoo, self.layout, self.alignment)(model_id, epoch)


def fit_zoo(zoo: Zoo | str | Path, *, token_size: int | None = None, align: bool = False,
            include_batchnorm: bool = False, seed: int = 0, epochs: Sequence[int] | None = None,
            max_abs: float | None = None, alignment: Alignment | None = None,
            splits: Sequence[str] = ("train",), progress: bool = False) -> ZooFit:
    """Fit a tokenizer on ``zoo``: ``token_size`` values per token (None: the longest row),
    batch-norm statistics tokenized with ``include_batchnorm``, only checkpoints of
    ``epochs`` (None: all) and none with a weight above ``max_abs`` (nor above
    :data:`~sane.checkpoints.MAX_ABS`: :func:`~sane.checkpoints.weight_limit`); the
    standardization on the checkpoints of ``splits``. ``align`` aligns every model to one
    reference by weight matching with ``seed`` (or takes ``alignment``, already computed for
    this zoo)."""
    zoo = zoo if isinstance(zoo, Zoo) else Zoo.open(zoo)
    if max_abs is not None and not max_abs > 0:
        raise ConfigError(f"max_abs must be positive, got {max_abs}")
    layout = zoo_layout(zoo)
    model = build_model(layout.arch)
    manifest = make_manifest(model.state_dict(), token_size, model=model,
                             include_batchnorm=include_batchnorm)
    if align:
        permutation_spec(model)  # no spec, no alignment: say so before any work
    if align and alignment is None:
        alignment = align_zoo(zoo, seed=seed, progress=progress)
    alignment = alignment if align else None
    load = _loader(zoo, layout, alignment)
    rows, skipped = _usable_rows(zoo, layout, manifest, alignment, epochs, max_abs, progress)
    train = [(m, e) for m, e, split in rows if split in splits]
    if not train:
        raise FormatError(f"{zoo.path}: no usable checkpoint of the {'/'.join(splits)} split "
                          "to fit the standardization on")
    reference = None
    if alignment is not None:
        ref, epoch = alignment.reference, alignment.epochs[alignment.reference]
        reference = layout.rename(ref, zoo.load_checkpoint(ref, epoch))
    tokenizer = Tokenizer.fit(
        model, (load(m, e) for m, e in tqdm(train, desc="standardization", disable=not progress)),
        token_size=token_size, include_batchnorm=include_batchnorm, reference=reference,
        seed=seed)
    return ZooFit(zoo, tokenizer, layout, alignment, rows, skipped)


def _loader(zoo: Zoo, layout: ZooLayout, alignment: Alignment | None
            ) -> Callable[[str, int], dict[str, torch.Tensor]]:
    def load(model_id: str, epoch: int) -> dict[str, torch.Tensor]:
        state = layout.rename(model_id, zoo.load_checkpoint(model_id, epoch))
        return state if alignment is None else alignment.apply(model_id, state)

    return load


def _usable_rows(zoo: Zoo, layout: ZooLayout, manifest: TokenManifest,
                 alignment: Alignment | None, epochs: Sequence[int] | None,
                 max_abs: float | None, progress: bool
                 ) -> tuple[list[tuple[str, int, str]], dict[str, int]]:
    """``(model, epoch, split)`` of every usable checkpoint, in split then id then epoch
    order, and the numbers left out for non-finite weights and for weights above
    ``weight_limit(max_abs)``."""
    split_of = {m: s for s, ids in zoo.split.items() for m in ids}
    rows, skipped = [], {"non_finite": 0, "above_max_abs": 0}
    ids = [m for s in ("train", "val", "test") for m in sorted(zoo.split[s])]
    load = _loader(zoo, layout, alignment)
    for model_id in tqdm(ids, desc="checking", unit="model", disable=not progress):
        if alignment is not None and model_id not in alignment.perms:
            continue  # no finite checkpoint at all
        for epoch in zoo.checkpoint_epochs(model_id):
            if epochs is not None and epoch not in epochs:
                continue
            state = load(model_id, epoch)  # its errors name the file
            try:
                manifest.check_state_dict(state, finite=False)
            except FormatError as error:
                raise FormatError(f"{zoo.checkpoint_path(model_id, epoch)}: {error}") from error
            values = [state[k] for k in manifest.tokenized_keys()]
            if not all(torch.isfinite(v).all() for v in values):
                skipped["non_finite"] += 1
                continue
            if max(float(v.abs().max()) for v in values if v.numel()) > weight_limit(max_abs):
                skipped["above_max_abs"] += 1
                continue
            rows.append((model_id, epoch, split_of[model_id]))
    return rows, skipped
