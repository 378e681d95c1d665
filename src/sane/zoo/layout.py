"""The parameter layout a zoo's models share, under one set of key names.

Models of one zoo may differ in hyperparameters that change state-dict *names* but not the
tensors: a CNN-s with dropout has ``module_list.4.weight`` where one without has
``module_list.3.weight``; activations and initializations change nothing. Whatever works on the
whole population (alignment, the token store) needs one naming. A :class:`ZooLayout` takes the
keys of the first model (in id order) as canonical and renames every model's state dict to
them position by position, after checking that the tensors' shapes and dtypes agree in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from sane.errors import ConfigError, FormatError
from sane.zoo.architectures import ArchConfig, state_layout
from sane.zoo.storage import Zoo


@dataclass(frozen=True)
class ZooLayout:
    """Canonical ``keys`` and the architecture ``arch`` they come from; ``own_keys[model_id]``
    are each model's keys in the same order."""

    arch: ArchConfig
    keys: tuple[str, ...]
    own_keys: dict[str, tuple[str, ...]]

    def rename(
        self, model_id: str, state_dict: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``state_dict`` of ``model_id`` under the canonical keys, in canonical order."""
        own = self.own_keys[model_id]
        if set(state_dict) != set(own):
            raise FormatError(f"model {model_id}: state dict keys do not match its architecture: "
                              f"missing {sorted(set(own) - set(state_dict))[:5]}, unexpected "
                              f"{sorted(set(state_dict) - set(own))[:5]}")
        return {canonical: state_dict[key] for canonical, key in zip(self.keys, own)}


def zoo_layout(zoo: Zoo) -> ZooLayout:
    """The shared layout of ``zoo``'s models (ConfigError naming two models that differ)."""
    if not zoo.models:
        raise FormatError(f"{zoo.path}: the zoo has no models")
    first = min(zoo.models, key=lambda m: m.id)
    reference = state_layout(first.architecture)
    own_keys = {}
    for entry in zoo.models:
        layout = state_layout(entry.architecture)
        if [(s, d) for _, s, d in layout] != [(s, d) for _, s, d in reference]:
            raise ConfigError(f"{zoo.path}: models {first.id!r} and {entry.id!r} have different "
                              "parameter shapes; a store or alignment needs one architecture")
        own_keys[entry.id] = tuple(k for k, _, _ in layout)
    return ZooLayout(first.architecture, tuple(k for k, _, _ in reference), own_keys)


def layout_groups(zoo: Zoo) -> list[list[str]]:
    """The zoo's model ids grouped by parameter layout (the shapes and dtypes of their
    tensors, in module order): one group for a zoo of one architecture, several for a mixed
    zoo (CNN-s beside a wider CNN-s). Groups are ordered by their first model id."""
    groups: dict[tuple, list[str]] = {}
    for entry in sorted(zoo.models, key=lambda m: m.id):
        shapes = tuple((s, d) for _, s, d in state_layout(entry.architecture))
        groups.setdefault(shapes, []).append(entry.id)
    return list(groups.values())


def rename_positionally(state_dict: Mapping[str, torch.Tensor],
                        own: Sequence[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """``state_dict``'s tensors under the keys of ``own`` (``(key, shape)`` pairs in module
    order), position by position, after checking that every shape agrees: a zoo's canonical
    keys back to a model whose dropout modules shift its own."""
    shapes = [tuple(t.shape) for t in state_dict.values()]
    if shapes != [tuple(s) for _, s in own]:
        raise FormatError(f"a state dict of shapes {shapes[:4]}... does not fit a model with "
                          f"keys {[k for k, _ in own][:4]}...")
    return {key: t for (key, _), t in zip(own, state_dict.values())}


def as_architecture(arch: ArchConfig, state_dict: Mapping[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """``state_dict`` (a zoo's canonical keys, in canonical order) under ``arch``'s own keys:
    the inverse of :meth:`ZooLayout.rename` for a model of architecture ``arch``."""
    return rename_positionally(state_dict, [(k, s) for k, s, _ in state_layout(arch)])
