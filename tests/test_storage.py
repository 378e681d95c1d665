"""Zoo storage: manifest validation, split, epoch records, atomicity of the commit order."""

import json

import pytest
import torch

from sane.errors import FormatError
from sane.zoo.architectures import ArchConfig, build_model
from sane.zoo.storage import ModelEntry, Zoo, make_split


def _entries(n):
    return [ModelEntry(f"m{i:04d}", seed=i, architecture=ArchConfig(), training={"lr": 1e-3})
            for i in range(n)]


def test_split_is_model_level_deterministic_and_order_free():
    ids = [f"m{i:04d}" for i in range(100)]
    split = make_split(ids, seed=0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [70, 15, 15]
    assert sorted(i for part in split.values() for i in part) == ids
    assert make_split(list(reversed(ids)), seed=0) == split
    assert make_split(ids, seed=1) != split


def test_small_splits_are_never_empty():
    split = make_split(["a", "b", "c", "d", "e"], seed=0)
    assert all(len(part) >= 1 for part in split.values())


def test_bad_split_fractions():
    with pytest.raises(FormatError, match="summing to 1"):
        make_split(["a"], fractions=(0.5, 0.2, 0.2))


def test_create_open_and_epoch_records(tmp_path):
    zoo = Zoo.create(tmp_path / "zoo", _entries(4), dataset={"name": "digits"})
    model = build_model(ArchConfig(), seed=1)
    zoo.write_epoch("m0001", 0, model.state_dict(),
                    {"train_acc": 0.5, "test_acc": 0.25, "train_loss": float("nan")})
    zoo.write_epoch("m0001", 3, None, {"test_acc": 0.75})

    again = Zoo.open(tmp_path / "zoo")
    rows = again.metrics("m0001")
    assert [r["epoch"] for r in rows] == [0, 3]
    assert rows[0]["ggap"] == pytest.approx(0.25)
    assert rows[0]["train_loss"] is None  # non-finite values are not written as NaN
    assert again.checkpoint_epochs("m0001") == [0]
    assert again.last_epoch("m0001") == 3 and again.last_epoch("m0002") is None
    state = again.load_checkpoint("m0001", 0)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_epochs_must_increase_and_metrics_are_checked(tmp_path):
    zoo = Zoo.create(tmp_path, _entries(3), dataset={"name": "digits"})
    zoo.write_epoch("m0000", 1, None, {})
    with pytest.raises(FormatError, match="epoch 1 written after epoch 1"):
        zoo.write_epoch("m0000", 1, None, {})
    with pytest.raises(FormatError, match="unknown metrics"):
        zoo.write_epoch("m0000", 2, None, {"accuracy": 1.0})


def test_open_rejects_malformed_manifests(tmp_path):
    with pytest.raises(FormatError, match="not a zoo"):
        Zoo.open(tmp_path)
    Zoo.create(tmp_path, _entries(3), dataset={"name": "digits"})
    manifest = json.loads((tmp_path / "zoo.json").read_text())
    for change, message in [({"version": 99}, "version 99"), ({"format": "x"}, "format"),
                            ({"split": {"train": [], "val": [], "test": []}}, "every model")]:
        (tmp_path / "zoo.json").write_text(json.dumps({**manifest, **change}))
        with pytest.raises(FormatError, match=message):
            Zoo.open(tmp_path)
    (tmp_path / "zoo.json").write_text("{")
    with pytest.raises(FormatError, match="not valid JSON"):
        Zoo.open(tmp_path)


def test_create_refuses_to_overwrite(tmp_path):
    Zoo.create(tmp_path, _entries(3), dataset={"name": "digits"})
    with pytest.raises(FormatError, match="already exists"):
        Zoo.create(tmp_path, _entries(3), dataset={"name": "digits"})


def test_missing_or_corrupt_checkpoint(tmp_path):
    zoo = Zoo.create(tmp_path, _entries(3), dataset={"name": "digits"})
    with pytest.raises(FormatError, match="checkpoint not found"):
        zoo.load_checkpoint("m0000", 0)
    zoo.checkpoint_path("m0000", 0).parent.mkdir(parents=True)
    zoo.checkpoint_path("m0000", 0).write_bytes(b"garbage")
    with pytest.raises(FormatError, match=r"epoch_000.safetensors: not a checkpoint \(text\)"):
        zoo.load_checkpoint("m0000", 0)
    with pytest.raises(FormatError, match="no model"):
        zoo.model("m9999")


def test_checkpoints_come_back_in_module_order_and_are_checked(tmp_path):
    zoo = Zoo.create(tmp_path, _entries(3), dataset={"name": "digits"})
    state = build_model(ArchConfig(), seed=0).state_dict()
    zoo.write_epoch("m0000", 0, state, {})
    # safetensors stores keys sorted ("module_list.11" before "module_list.3"); the order of
    # layers matters to the tokenizer, so loading restores the module order.
    assert list(zoo.load_checkpoint("m0000", 0)) == list(state)
    wrong = dict(state, **{"module_list.3.weight": torch.zeros(6, 8, 3, 3)})
    zoo.write_epoch("m0001", 0, wrong, {})
    with pytest.raises(FormatError, match=r"'module_list.3.weight' is torch.float32 \[6, 8, 3"):
        zoo.load_checkpoint("m0001", 0)
    zoo.write_epoch("m0002", 0, {**state, "extra": torch.zeros(1)}, {})
    with pytest.raises(FormatError, match=r"unexpected \['extra'\]"):
        zoo.load_checkpoint("m0002", 0)
