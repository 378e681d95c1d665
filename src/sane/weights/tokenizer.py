"""The tokenizer of a pretrained SANE: one object that turns a state dict into the tokens the
SANE was trained on, and back.

It holds the token manifest (layout), the per-tensor standardization fitted on the training
split and, for an aligned zoo, the permutation spec and the alignment reference's weights, so
that a model from anywhere is aligned to the same reference before it is tokenized. It is
saved with every pretraining run, so a run needs no token store to embed new models::

    DIR/tokenizer.json          format, version, manifest, standardization, permutation spec
    DIR/tokenizer.safetensors   the alignment reference's weights (aligned zoos)

Models whose key names differ from the zoo's canonical ones only by position (dropout modules
shift a CNN-s's keys) are renamed position by position, and then checked.

:meth:`Tokenizer.fit` fits one on a zoo (:func:`fit_zoo` also returns the checkpoints it
selected, which :func:`sane.weights.store.prepare_store` then tokenizes): (1) the token
layout from the zoo's shared parameter layout (:mod:`sane.zoo.layout`); (2) with ``align``,
weight matching of every model to one reference (:mod:`sane.weights.align`); (3) per-tensor
standardization fitted on the training split's usable checkpoints only: finite, and with no
tokenized weight above ``max_abs`` when set, nor above :data:`sane.checkpoints.MAX_ABS` (the
largest weight any computation here accepts) in any case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sane import atomic
from sane.checkpoints import weight_limit
from sane.errors import ConfigError, FormatError
from sane.weights.align import Alignment, align_zoo
from sane.weights.manifest import TokenManifest
from sane.weights.matching import weight_matching
from sane.weights.permutations import (
    PermutationSpec,
    PermutedState,
    apply_permutation,
    permutation_spec,
)
from sane.weights.standardize import Standardization, fit_standardization
from sane.weights.token_ranges import detokenize_pieces, token_reader
from sane.weights.tokenize import make_manifest
from sane.zoo.architectures import build_model
from sane.zoo.layout import ZooLayout, zoo_layout
from sane.zoo.storage import Zoo

FORMAT = "sane-tokenizer"
VERSION = 1
CONFIG_FILE = "tokenizer.json"
WEIGHTS_FILE = "tokenizer.safetensors"


@dataclass(frozen=True)
class Tokenizer:
    """``manifest`` the token layout; ``standardization`` per tensor; with alignment, the
    permutation ``spec``, the ``reference`` state dict (canonical keys, raw weights) and the
    weight-matching ``seed`` the zoo was aligned with."""

    manifest: TokenManifest
    standardization: Standardization
    spec: PermutationSpec | None = None
    reference: dict[str, torch.Tensor] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.reference is not None:
            if self.spec is None:
                raise FormatError("an alignment reference needs a permutation spec")
            self.manifest.check_state_dict(self.reference)

    def canonical(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state_dict`` under the manifest's keys, checked: renamed by position when its
        keys differ (then the shapes must agree in order); an error names the first key
        that is missing or whose shape or dtype differs."""
        if not isinstance(state_dict, Mapping):
            raise FormatError(f"expected a state dict, got {type(state_dict).__name__}")
        keys = self.manifest.keys
        if any(k not in state_dict for k in keys):
            if len(state_dict) != len(keys):
                missing = next(k for k in keys if k not in state_dict)
                raise FormatError(f"the state dict does not fit this tokenizer: key "
                                  f"{missing!r} is missing (expected {len(keys)} entries, got "
                                  f"{len(state_dict)})")
            state_dict = dict(zip(keys, state_dict.values()))
        self.manifest.check_state_dict(state_dict)
        return {k: state_dict[k] for k in keys}

    def encode(self, state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Standardized tokens ``[N, d_t]`` float32 of ``state_dict``, aligned to the
        reference first when the tokenizer has one."""
        return self.reader(state_dict)(0, self.manifest.num_tokens)

    def aligned(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`canonical` ``state_dict``, aligned to the reference by weight matching when
        the tokenizer has one (a copy of the permuted tensors)."""
        state = self.canonical(state_dict)
        if self.reference is None:
            return state
        perms = weight_matching(self.spec, self.reference, state, seed=self.seed)
        return apply_permutation(state, self.spec, perms)

    def reader(self, state_dict: Mapping[str, torch.Tensor], *,
               permutation: Mapping[str, torch.Tensor] | None = None,
               aligned: bool = False) -> Callable[[int, int], torch.Tensor]:
        """``read(start, stop)``: tokens ``[start, stop)`` of :meth:`encode` of
        ``state_dict``, made when asked (standardized on the fly), so that a large model is
        encoded in pieces without its whole token sequence. With ``permutation`` (one
        permutation per group of :attr:`spec`), the tokens of the aligned model permuted by
        it, each entry permuted as it is read (:class:`PermutedState`, no permuted copy of the
        model). ``aligned``: ``state_dict`` is already :meth:`aligned` (no weight matching
        again). The reader holds the canonical state dict (the caller's tensors, or their
        aligned copy)."""
        state = self.canonical(state_dict) if aligned else self.aligned(state_dict)
        if permutation is not None:
            if self.spec is None:
                raise ConfigError("this tokenizer's architecture has no permutation spec: "
                                  "nothing to permute")
            state = PermutedState(state, self.spec, permutation)
        return token_reader(state, self.manifest, transform=self.standardization.standardize,
                            dtype=torch.float32)

    def decode(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state dict (canonical keys, de-standardized) of standardized ``tokens
        [N, d_t]``; entries kept out of the tokens hold a fresh module's values."""
        return self.decode_pieces([(0, tokens)])

    def decode_pieces(self, pieces: Iterable[tuple[int, torch.Tensor]], *,
                      out: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """:meth:`decode` of tokens that arrive in pieces ``(start, tokens [length, d_t])``
        covering the sequence once (:func:`~sane.weights.token_ranges.detokenize_pieces`), each
        de-standardized and written into the state dict as it comes, so that neither the
        whole sequence nor a second copy of the weights is held; into ``out``'s tensors
        (canonical keys) when given."""
        return detokenize_pieces(pieces, self.manifest,
                                 transform=self.standardization.destandardize, out=out)

    @classmethod
    def fit(cls, zoo: Zoo | str | Path, *, token_size: int | None = None, align: bool = False,
            include_batchnorm: bool = False, seed: int = 0,
            epochs: Sequence[int] | None = None, max_abs: float | None = None,
            progress: bool = False) -> Tokenizer:
        """The tokenizer of ``zoo``, fitted on its training split (see the module docstring;
        the arguments are those of :func:`fit_zoo`)."""
        return fit_zoo(zoo, token_size=token_size, align=align,
                       include_batchnorm=include_batchnorm, seed=seed, epochs=epochs,
                       max_abs=max_abs, progress=progress).tokenizer

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``tokenizer.safetensors`` (with a reference) and then ``tokenizer.json``."""
        path = Path(path)
        if self.reference is not None:
            atomic.save_tensors(path / WEIGHTS_FILE, self.reference)
        atomic.write_json(path / CONFIG_FILE, {
            "format": FORMAT, "version": VERSION, "manifest": self.manifest.to_dict(),
            "standardization": self.standardization.to_dict(),
            "permutation_spec": None if self.spec is None else self.spec.to_dict(),
            "aligned": self.reference is not None, "seed": self.seed,
        })

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """The tokenizer saved in ``path`` (a run directory or one written by
        :meth:`save_pretrained`)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        file = path / CONFIG_FILE
        if not file.is_file():
            raise FormatError(f"{path} holds no tokenizer: {CONFIG_FILE} not found")
        meta = atomic.read_manifest(file, FORMAT, VERSION)
        try:
            manifest = TokenManifest.from_dict(meta["manifest"])
            standardization = Standardization.from_dict(meta["standardization"])
            spec = meta["permutation_spec"]
            spec = None if spec is None else PermutationSpec.from_dict(spec)
            aligned, seed = bool(meta["aligned"]), int(meta["seed"])
        except (KeyError, TypeError, ValueError) as error:
            raise FormatError(f"{file}: malformed tokenizer ({error!r})") from error
        reference = None
        if aligned:
            try:
                tensors = load_file(str(path / WEIGHTS_FILE))
            except (OSError, SafetensorError) as error:
                raise FormatError(f"{path / WEIGHTS_FILE}: unreadable ({error})") from error
            # safetensors sorts keys; a state dict is in module order
            reference = {k: tensors[k] for k in manifest.keys if k in tensors} | tensors
        return cls(manifest, standardization, spec, reference, seed)


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
    spec = _spec_or_none(model, align)
    if align and alignment is None:
        alignment = align_zoo(zoo, seed=seed, progress=progress)
    alignment = alignment if align else None
    load = _loader(zoo, layout, alignment)
    rows, skipped = _usable_rows(zoo, layout, manifest, alignment, epochs, max_abs, progress)
    train = [(m, e) for m, e, split in rows if split in splits]
    if not train:
        raise FormatError(f"{zoo.path}: no usable checkpoint of the {'/'.join(splits)} split "
                          "to fit the standardization on")
    standardization = fit_standardization(
        (load(m, e) for m, e in tqdm(train, desc="standardization", disable=not progress)),
        keys=manifest.tokenized_keys())
    reference = None
    if alignment is not None:
        ref, epoch = alignment.reference, alignment.epochs[alignment.reference]
        reference = layout.rename(ref, zoo.load_checkpoint(ref, epoch))
    return ZooFit(zoo, Tokenizer(manifest, standardization, spec, reference, seed), layout,
                  alignment, rows, skipped)


def _spec_or_none(model: torch.nn.Module, required: bool) -> PermutationSpec | None:
    """The model's permutation spec, or None when its graph has no supported one (then no
    permutation augmentation is offered, and ``align`` is an error)."""
    try:
        return permutation_spec(model)
    except ConfigError:
        if required:
            raise
        return None


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
