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

The tokenizer knows state dicts, not zoos: :meth:`Tokenizer.fit` takes a module of the
architecture and the state dicts to standardize over. Fitting one on a zoo (choosing its
usable checkpoints, aligning its models) is :func:`sane.weights.zoo_tokenizer.fit_zoo`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sane import atomic
from sane.errors import ConfigError, FormatError
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
    def fit(cls, model: nn.Module, states: Iterable[Mapping[str, torch.Tensor]], *,
            token_size: int | None = None, include_batchnorm: bool = False,
            reference: Mapping[str, torch.Tensor] | None = None, seed: int = 0) -> Tokenizer:
        """The tokenizer of ``model``'s architecture: its token layout
        (:func:`~sane.weights.tokenize.make_manifest`: ``token_size`` values per token, None
        the longest row; batch-norm statistics tokenized with ``include_batchnorm``) and the
        per-tensor standardization over ``states`` (state dicts under ``model``'s keys, read
        once; aligned to ``reference`` already when there is one). With ``reference`` (raw
        weights), the tokenizer aligns every model to it by weight matching with ``seed``;
        ``model`` must then have a permutation spec."""
        manifest = make_manifest(model.state_dict(), token_size, model=model,
                                 include_batchnorm=include_batchnorm)
        spec = _spec_or_none(model, required=reference is not None)
        standardization = fit_standardization(states, keys=manifest.tokenized_keys())
        return cls(manifest, standardization, spec,
                   None if reference is None else dict(reference), seed)

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


def _spec_or_none(model: torch.nn.Module, required: bool) -> PermutationSpec | None:
    """The model's permutation spec, or None when its graph has no supported one (then no
    permutation augmentation is offered, and ``align`` is an error)."""
    try:
        return permutation_spec(model)
    except ConfigError:
        if required:
            raise
        return None
