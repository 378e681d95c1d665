"""Align every model of a zoo to one reference model by weight matching.

Each model gets one permutation, computed from its last stored checkpoint and applied to all of
its checkpoints, so a model's trajectory stays intact. The alignment is saved next to its
outputs as ``alignment.safetensors`` (one int64 tensor ``<model id>/<permutation>`` per model
and permutation) plus ``alignment.json`` (reference, seed, epochs, permutation spec); the JSON is
written last, so its presence marks a complete alignment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sane import atomic
from sane.checkpoints import MAX_ABS
from sane.errors import FormatError
from sane.weights.matching import weight_matching
from sane.weights.permutations import (
    Perms,
    PermutationSpec,
    apply_permutation,
    check_permutations,
    identity_permutation,
    permutation_spec,
)
from sane.zoo.architectures import build_model
from sane.zoo.layout import ZooLayout, zoo_layout
from sane.zoo.storage import Zoo

FORMAT = "sane-alignment"
VERSION = 1
TENSORS = "alignment.safetensors"
MANIFEST = "alignment.json"


@dataclass(frozen=True)
class Alignment:
    """One permutation per model mapping it onto ``reference``.

    ``perms[model_id]`` maps each permutation name of ``spec`` to an int64 ``[size]`` index;
    ``epochs[model_id]`` is the epoch of the checkpoint it was computed from.
    """

    reference: str
    spec: PermutationSpec
    perms: dict[str, Perms]
    epochs: dict[str, int]
    seed: int

    def apply(
        self, model_id: str, state_dict: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``state_dict`` (any epoch of ``model_id``, under the zoo's canonical keys: see
        :class:`~sane.zoo.layout.ZooLayout`) permuted into the reference's alignment."""
        if model_id not in self.perms:
            raise FormatError(f"model {model_id!r} is not in the alignment (to {self.reference!r})")
        return apply_permutation(state_dict, self.spec, self.perms[model_id])

    def save(self, directory: str | Path) -> None:
        """Write ``alignment.safetensors`` then ``alignment.json`` into ``directory``."""
        directory = Path(directory)
        tensors = {f"{m}/{name}": p for m, perms in self.perms.items() for name, p in perms.items()}
        atomic.save_tensors(directory / TENSORS, tensors)
        atomic.write_json(directory / MANIFEST, {
            "format": FORMAT, "version": VERSION, "reference": self.reference, "seed": self.seed,
            "epochs": self.epochs, "spec": self.spec.to_dict(),
        })

    @classmethod
    def load(cls, directory: str | Path) -> Alignment:
        """Read an alignment written by :meth:`save`, validating every permutation."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        manifest_file, tensor_file = directory / MANIFEST, directory / TENSORS
        if not manifest_file.is_file():
            raise FormatError(f"{manifest_file}: alignment manifest not found")
        manifest = atomic.read_manifest(manifest_file, FORMAT, VERSION)
        _check_keys(manifest, manifest_file)
        try:
            spec = PermutationSpec.from_dict(manifest["spec"])
            epochs = {str(m): int(e) for m, e in manifest["epochs"].items()}
            seed = int(manifest["seed"])
        except (FormatError, TypeError, ValueError, AttributeError) as error:
            raise FormatError(f"{manifest_file}: malformed alignment ({error})") from error
        try:
            tensors = load_file(str(tensor_file))
        except (SafetensorError, OSError) as error:
            raise FormatError(f"{tensor_file}: unreadable alignment tensors ({error})") from error
        expected = {f"{m}/{name}" for m in epochs for name in spec.sizes}
        if set(tensors) != expected:
            raise FormatError(f"{tensor_file}: tensors do not match {manifest_file}: missing "
                              f"{sorted(expected - set(tensors))[:5]}, unexpected "
                              f"{sorted(set(tensors) - expected)[:5]}")
        perms = {m: {name: tensors[f"{m}/{name}"] for name in spec.sizes} for m in epochs}
        for m, p in perms.items():
            try:
                check_permutations(spec, p)
            except FormatError as error:
                raise FormatError(f"{tensor_file}: model {m!r}: {error}") from error
        if manifest["reference"] not in perms:
            raise FormatError(f"{manifest_file}: reference {manifest['reference']!r} has no "
                              "permutation")
        return cls(reference=manifest["reference"], spec=spec, perms=perms, epochs=epochs,
                   seed=seed)


def choose_reference(zoo: Zoo) -> str:
    """The model every other model is aligned to.

    Rule: among the models of the *training* split (so validation and test models never define
    the canonical form), take those whose last stored checkpoint is usable (:func:`_usable`);
    pick the one trained longest (largest last stored epoch), breaking ties by the smallest
    model id in string order.
    The result depends only on the manifest and the checkpoints, never on how the file system
    lists directories.
    """
    candidates = []
    for model_id in zoo.split["train"]:
        epochs = zoo.checkpoint_epochs(model_id)
        if epochs:
            candidates.append((-epochs[-1], model_id))
    for negative_epoch, model_id in sorted(candidates):
        if _usable(zoo.load_checkpoint(model_id, -negative_epoch)):
            return model_id
    raise FormatError(f"{zoo.path}: no training-split model has a usable stored checkpoint "
                      f"(finite, |w| <= {MAX_ABS:g}) to serve as the alignment reference")


def zoo_permutation_spec(zoo: Zoo) -> PermutationSpec:
    """The permutation spec of ``zoo``'s shared layout, under its canonical keys (see
    :func:`~sane.zoo.layout.zoo_layout`; ConfigError if the models' shapes differ)."""
    return permutation_spec(build_model(zoo_layout(zoo).arch, seed=0))


def align_zoo(zoo: Zoo, *, seed: int = 0, progress: bool = True) -> Alignment:
    """Align every model of ``zoo`` to :func:`choose_reference`.

    Each model's permutation comes from :func:`~sane.weights.weight_matching` between the
    reference's last stored checkpoint and the model's last stored checkpoint with usable
    weights (:func:`_usable`: a model that diverged falls back to its latest usable one; a
    model without any is left out), with the same ``seed`` for every model, so that a model's
    permutation depends only on the two checkpoints and ``seed``.
    """
    layout = zoo_layout(zoo)
    spec = permutation_spec(build_model(layout.arch, seed=0))
    reference = choose_reference(zoo)
    reference_epoch = zoo.checkpoint_epochs(reference)[-1]
    reference_state = _load(zoo, layout, spec, reference, reference_epoch)
    perms, epochs = {}, {}
    ids = sorted(m.id for m in zoo.models)
    for model_id in tqdm(ids, desc="aligning", unit="model", disable=not progress):
        if model_id == reference:
            perms[model_id], epochs[model_id] = identity_permutation(spec), reference_epoch
            continue
        for epoch in reversed(zoo.checkpoint_epochs(model_id)):
            state = _load(zoo, layout, spec, model_id, epoch)
            if _usable(state):
                try:
                    perms[model_id] = weight_matching(spec, reference_state, state, seed=seed)
                except FormatError as error:
                    raise FormatError(f"{zoo.checkpoint_path(model_id, epoch)}: {error}") from error
                epochs[model_id] = epoch
                break
    return Alignment(reference=reference, spec=spec, perms=perms, epochs=epochs, seed=seed)


def _load(
    zoo: Zoo, layout: ZooLayout, spec: PermutationSpec, model_id: str, epoch: int
) -> dict[str, torch.Tensor]:
    """A checkpoint under the canonical keys whose shapes fit ``spec`` (FormatError naming the
    file if not)."""
    file = zoo.checkpoint_path(model_id, epoch)
    state = zoo.load_checkpoint(model_id, epoch)  # its errors name the file
    try:
        state = layout.rename(model_id, state)
    except FormatError as error:
        raise FormatError(f"{file}: {error}") from error
    for key, names in spec.axes.items():
        tensor = state[key]
        if tensor.dim() != len(names) or any(
            n is not None and tensor.shape[a] % spec.sizes[n] for a, n in enumerate(names)
        ):
            raise FormatError(f"{file}: {key!r} has shape {tuple(tensor.shape)}, which does "
                              "not fit the architecture")
    return state


def _usable(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether every floating-point weight is finite and at most :data:`MAX_ABS` in magnitude
    (diverged models are neither aligned to nor chosen as the reference)."""
    return all(bool(torch.isfinite(t).all()) and (t.numel() == 0 or t.abs().max() <= MAX_ABS)
               for t in state_dict.values() if t.is_floating_point())


def _check_keys(manifest: dict[str, Any], file: Path) -> None:
    for key in ("reference", "seed", "epochs", "spec"):
        if key not in manifest:
            raise FormatError(f"{file}: missing key {key!r}")
