"""Zoo alignment: the reference rule, independence of listing order, one permutation per model
applied to all its epochs, fallbacks for diverged models, and the saved file format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sane import atomic
from sane.errors import ConfigError, FormatError
from sane.weights import (
    Alignment,
    align_zoo,
    apply_permutation,
    distance,
    permutation_spec,
    random_permutation,
    weight_matching,
)
from sane.weights.align import choose_reference
from sane.weights.permutations import invert
from sane.zoo.architectures import ArchConfig, build_model
from sane.zoo.layout import zoo_layout
from sane.zoo.storage import ModelEntry, Zoo

ARCH = ArchConfig(init="kaiming_normal")
SPEC = permutation_spec(build_model(ARCH, seed=0))


def random_state(seed: int, arch: ArchConfig = ARCH) -> dict[str, torch.Tensor]:
    return build_model(arch, seed=seed).state_dict()


def nan_state(seed: int) -> dict[str, torch.Tensor]:
    state = random_state(seed)
    state["module_list.0.bias"] = torch.full_like(state["module_list.0.bias"], float("nan"))
    return state


def make_zoo(
    path: Path,
    states: dict[str, list[dict | None]],
    split: dict[str, list[str]],
    archs: dict[str, ArchConfig] | None = None,
) -> Zoo:
    """A zoo whose manifest lists (and whose directories are written in) the order of ``states``;
    ``states[id][e]`` is the checkpoint of epoch ``e`` (None: a metrics row without one)."""
    archs = archs or {}
    entries = [ModelEntry(i, seed=sum(map(ord, i)), architecture=archs.get(i, ARCH))
               for i in states]
    zoo = Zoo.create(path, entries, dataset={"name": "digits"}, split=split)
    for model_id, epochs in states.items():
        for epoch, state in enumerate(epochs):
            zoo.write_epoch(model_id, epoch, state, {"test_acc": 0.5})
    return zoo


def test_reference_rule(tmp_path: Path) -> None:
    states = {
        "a": [random_state(1), random_state(2), random_state(3)],  # validation split
        "b": [random_state(4), random_state(5)],  # trained for fewer epochs
        "c": [random_state(6), random_state(7), random_state(8)],
        "d": [random_state(9), random_state(10), nan_state(11)],  # diverged
        "e": [random_state(12), random_state(13), random_state(14)],
    }
    split = {"train": ["b", "c", "d", "e"], "val": ["a"], "test": []}
    assert choose_reference(make_zoo(tmp_path / "1", states, split)) == "c"
    states["c"][2] = {k: v * 1e30 for k, v in random_state(8).items()}  # diverged as well
    assert choose_reference(make_zoo(tmp_path / "2", states, split)) == "e"
    states["e"][2] = None  # last stored epoch 1, as for "b": the smaller id wins
    assert choose_reference(make_zoo(tmp_path / "3", states, split)) == "b"
    only_nan = {"a": [nan_state(1)], "b": [random_state(2)]}
    zoo = make_zoo(tmp_path / "4", only_nan, {"train": ["a"], "val": ["b"], "test": []})
    with pytest.raises(FormatError, match="no training-split model has a usable stored checkpoint"):
        choose_reference(zoo)


def permuted_zoo_states() -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Model "a" plus "b", "c": copies of "a" under one hidden permutation each (all epochs)
    and "d", an independent model."""
    a = [random_state(s) for s in (100, 101, 102)]
    hidden = {m: random_permutation(SPEC, torch.Generator().manual_seed(s))
              for m, s in (("b", 1), ("c", 2))}
    states = {"a": a, **{m: [apply_permutation(s, SPEC, p) for s in a] for m, p in hidden.items()},
              "d": [random_state(s) for s in (200, 201, 202)]}
    return states, hidden


SPLIT = {"train": ["a", "b", "d"], "val": ["c"], "test": []}


def test_one_permutation_per_model_aligns_every_epoch(tmp_path: Path) -> None:
    states, hidden = permuted_zoo_states()
    zoo = make_zoo(tmp_path, states, SPLIT)
    alignment = align_zoo(zoo, seed=5, progress=False)
    assert alignment.reference == "a" and alignment.seed == 5
    assert alignment.epochs == {"a": 2, "b": 2, "c": 2, "d": 2}
    for model_id in ("b", "c"):  # found from the last epoch, exact for the earlier ones too
        assert all(torch.equal(alignment.perms[model_id][n], invert(hidden[model_id])[n])
                   for n in SPEC.sizes)
        for epoch in range(3):
            aligned = alignment.apply(model_id, zoo.load_checkpoint(model_id, epoch))
            assert all(torch.equal(aligned[k], states["a"][epoch][k]) for k in aligned)
    direct = weight_matching(SPEC, states["a"][2], states["d"][2], seed=5)
    assert all(torch.equal(alignment.perms["d"][n], direct[n]) for n in SPEC.sizes)
    assert all(torch.equal(p, torch.arange(len(p))) for p in alignment.perms["a"].values())


def same_alignment(x: Alignment, y: Alignment) -> bool:
    return (x.reference == y.reference and x.epochs == y.epochs and x.spec == y.spec
            and x.seed == y.seed and x.perms.keys() == y.perms.keys()
            and all(torch.equal(x.perms[m][n], y.perms[m][n]) for m in x.perms for n in SPEC.sizes))


def test_alignment_ignores_listing_order_and_is_deterministic(tmp_path: Path) -> None:
    # the public reference code took the first model of a shuffled directory listing
    states, _ = permuted_zoo_states()
    states["e"] = [random_state(300), random_state(301), random_state(302)]
    split = {"train": ["a", "b", "d", "e"], "val": ["c"], "test": []}
    forward = make_zoo(tmp_path / "forward", states, split)
    backward = make_zoo(tmp_path / "backward", dict(reversed(states.items())),
                        {k: v[::-1] for k, v in split.items()})
    first = align_zoo(forward, progress=False)
    assert same_alignment(first, align_zoo(backward, progress=False))
    assert same_alignment(first, align_zoo(Zoo.open(forward.path), progress=False))


def test_diverged_and_checkpointless_models(tmp_path: Path) -> None:
    states, _ = permuted_zoo_states()
    states["b"][2] = nan_state(7)  # falls back to epoch 1
    states["e"] = [None, None]  # metrics without checkpoints: left out
    states["f"] = [nan_state(8)]  # nothing finite: left out
    zoo = make_zoo(tmp_path, states, {"train": ["a", "b", "d"], "val": ["c", "e", "f"],
                                      "test": []})
    alignment = align_zoo(zoo, progress=False)
    assert alignment.epochs == {"a": 2, "b": 1, "c": 2, "d": 2}
    direct = weight_matching(SPEC, states["a"][2], states["b"][1])
    assert all(torch.equal(alignment.perms["b"][n], direct[n]) for n in SPEC.sizes)
    with pytest.raises(FormatError, match="model 'e' is not in the alignment"):
        alignment.apply("e", states["a"][0])


def test_save_and_load_round_trip_and_validation(tmp_path: Path) -> None:
    states, _ = permuted_zoo_states()
    alignment = align_zoo(make_zoo(tmp_path / "zoo", states, SPLIT), progress=False)
    out = tmp_path / "out"
    alignment.save(out)
    assert same_alignment(Alignment.load(out), alignment)

    from safetensors.torch import load_file

    tensors = load_file(str(out / "alignment.safetensors"))
    name = next(iter(SPEC.sizes))
    atomic.save_tensors(out / "alignment.safetensors",
                        {**tensors, f"b/{name}": torch.zeros(SPEC.sizes[name], dtype=torch.int64)})
    with pytest.raises(FormatError, match=f"model 'b': permutation '{name}' is not a permutation"):
        Alignment.load(out)
    atomic.save_tensors(out / "alignment.safetensors",
                        {k: v for k, v in tensors.items() if k != f"d/{name}"})
    with pytest.raises(FormatError, match=f"missing \\['d/{name}'\\]"):
        Alignment.load(out)
    manifest = json.loads((out / "alignment.json").read_text())
    atomic.write_json(out / "alignment.json", {**manifest, "version": 99})
    with pytest.raises(FormatError, match="version 99"):
        Alignment.load(out)
    atomic.write_json(out / "alignment.json", {**manifest, "epochs": ["a"]})
    with pytest.raises(FormatError, match=r"alignment\.json: malformed alignment"):
        Alignment.load(out)
    with pytest.raises(FormatError, match="alignment manifest not found"):
        Alignment.load(tmp_path / "nowhere")


def test_mixed_architectures(tmp_path: Path) -> None:
    states = {"a": [random_state(1)], "b": [random_state(2)]}
    split = {"train": ["a", "b"], "val": [], "test": []}
    tanh_relu = {"b": ArchConfig(init="kaiming_normal", activation="relu")}  # same spec
    alignment = align_zoo(make_zoo(tmp_path / "1", states, split, tanh_relu), progress=False)
    assert set(alignment.perms) == {"a", "b"}
    dropout = ArchConfig(init="kaiming_normal", dropout=0.5)  # shifted module indices
    states["b"] = [random_state(2, dropout)]
    zoo = make_zoo(tmp_path / "2", states, split, {"b": dropout})
    alignment = align_zoo(zoo, progress=False)
    renamed = zoo_layout(zoo).rename("b", states["b"][0])
    assert list(renamed)[2] == "module_list.3.weight"  # b's module_list.4 under a's names
    assert torch.equal(renamed["module_list.3.weight"], states["b"][0]["module_list.4.weight"])
    aligned = alignment.apply("b", renamed)
    assert distance(states["a"][0], aligned) <= distance(states["a"][0], renamed)
    wide = ArchConfig(name="cnn_s_wide", init="kaiming_normal")
    states["b"] = [random_state(2, wide)]
    with pytest.raises(ConfigError, match="different parameter shapes"):
        align_zoo(make_zoo(tmp_path / "3", states, split, {"b": wide}), progress=False)


def test_checkpoint_with_foreign_keys(tmp_path: Path) -> None:
    wrong = random_state(2)
    wrong["extra"] = torch.zeros(3)
    zoo = make_zoo(tmp_path, {"a": [random_state(1)], "b": [wrong]},
                   {"train": ["a", "b"], "val": [], "test": []})
    with pytest.raises(FormatError, match=r"epoch_000.safetensors: .*keys do not match .*'extra'"):
        align_zoo(zoo, progress=False)
