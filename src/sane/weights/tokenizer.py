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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from sane import atomic
from sane.errors import FormatError
from sane.weights.manifest import TokenManifest
from sane.weights.matching import weight_matching
from sane.weights.permutations import PermutationSpec, apply_permutation
from sane.weights.standardize import Standardization
from sane.weights.tokenize import detokenize, tokenize_into

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
        """Standardized tokens ``[N, d_t]`` of ``state_dict``, aligned to the reference first
        when the tokenizer has one."""
        state = self.canonical(state_dict)
        if self.reference is not None:
            perms = weight_matching(self.spec, self.reference, state, seed=self.seed)
            state = apply_permutation(state, self.spec, perms)
        tokens = torch.empty(self.manifest.num_tokens, self.manifest.token_size)
        tokenize_into(self.standardization.apply(state), self.manifest, tokens)
        return tokens

    def decode(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state dict (canonical keys, de-standardized) of standardized ``tokens
        [N, d_t]``; entries kept out of the tokens hold a fresh module's values."""
        return self.standardization.invert(detokenize(tokens, self.manifest))

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
                reference = load_file(str(path / WEIGHTS_FILE))
            except (OSError, SafetensorError) as error:
                raise FormatError(f"{path / WEIGHTS_FILE}: unreadable ({error})") from error
        return cls(manifest, standardization, spec, reference, seed)
