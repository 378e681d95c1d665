"""Token store (`sane prepare`) and the window sampler."""

import dataclasses

import numpy as np
import pytest
import torch

from sane.cli import main
from sane.commands.prepare import parse_epochs
from sane.errors import ConfigError, FormatError
from sane.train import WindowConfig, WindowSampler
from sane.weights import detokenize
from sane.weights.store import StoreSettings, TokenStore, prepare_store
from sane.zoo import ArchConfig, ModelEntry, Zoo, build_model

ARCH = ArchConfig(name="cnn_s", dropout=0.5)


def _zoo(path, n_models=12, epochs=3, arch=ARCH):
    """A zoo of random (untrained) models with made-up metrics: no training needed."""
    zoo = Zoo.create(path, [ModelEntry(f"m{i:03d}", i, arch) for i in range(n_models)],
                     dataset={"name": "digits"})
    for i, entry in enumerate(zoo.models):
        for e in range(epochs):
            state = build_model(arch, seed=100 * i + e).state_dict()
            zoo.write_epoch(entry.id, e, state, {"test_acc": 0.1 * e + 0.01 * i,
                                                 "train_acc": 0.2 * e})
    return zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return _zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def store(zoo, tmp_path_factory):
    return prepare_store(zoo.path, tmp_path_factory.mktemp("store"), StoreSettings(align=True),
                         progress=False)


def test_one_stored_copy_per_checkpoint_in_split_order(zoo, store):
    assert store.tokens.shape == (12 * 3, 48, 201)
    assert isinstance(store.tokens, np.memmap) and not store.tokens.flags.writeable
    splits = [s for _, _, s in store.rows]
    assert splits == sorted(splits, key=["train", "val", "test"].index)
    for split in ("train", "val", "test"):
        models = {m for m, _, s in store.rows if s == split}
        assert models == set(zoo.split[split])
    row = store.rows.index(("m001", 2, _split_of(zoo, "m001")))
    assert store.property("test_acc")[row] == pytest.approx(0.21)
    assert store.property("ggap")[row] == pytest.approx(0.4 - 0.21)
    assert np.isnan(store.property("val_acc")).all()


def test_rows_rebuild_the_aligned_checkpoints(zoo, store):
    alignment = store.alignment
    assert alignment.reference in zoo.split["train"]
    for row in (0, len(store.rows) - 1):
        model_id, epoch, _ = store.rows[row]
        expected = alignment.apply(model_id, zoo.load_checkpoint(model_id, epoch))
        rebuilt = store.state_dict(row)
        for key in store.manifest.tokenized_keys():
            torch.testing.assert_close(rebuilt[key], expected[key], rtol=1e-5, atol=1e-6)


def test_standardization_is_fitted_on_the_training_split_only(zoo, store, tmp_path):
    # Scaling every val/test checkpoint by 100 must not change the statistics.
    scaled = Zoo.create(tmp_path / "zoo", zoo.models, dataset=zoo.dataset, split=zoo.split)
    for entry in zoo.models:
        factor = 1.0 if entry.id in zoo.split["train"] else 100.0
        for row in zoo.metrics(entry.id):
            state = {k: v * factor for k, v in zoo.load_checkpoint(entry.id, row["epoch"]).items()}
            metrics = {k: row[k] for k in ("test_acc", "train_acc")}
            scaled.write_epoch(entry.id, row["epoch"], state, metrics)
    other = prepare_store(scaled.path, tmp_path / "store", StoreSettings(align=True),
                          progress=False)
    assert other.standardization == store.standardization
    train = store.split_rows("train")
    assert abs(float(store.tokens[train][:, store.mask].mean())) < 0.05


def test_rerun_reuses_the_store_and_other_settings_are_refused(zoo, store):
    mtime = (store.path / "tokens.npy").stat().st_mtime_ns
    again = prepare_store(zoo.path, store.path, StoreSettings(align=True), progress=False)
    assert (store.path / "tokens.npy").stat().st_mtime_ns == mtime
    assert again.rows == store.rows
    with pytest.raises(ConfigError, match="prepared with"):
        prepare_store(zoo.path, store.path, StoreSettings(align=False), progress=False)


def test_epoch_selection_and_non_finite_checkpoints(tmp_path):
    zoo = _zoo(tmp_path / "zoo", n_models=5, epochs=3)
    bad = zoo.load_checkpoint("m002", 1)
    bad["module_list.0.weight"][0, 0, 0, 0] = float("nan")
    zoo.model_dir("m002").joinpath("metrics.json").unlink()
    for e in range(3):
        zoo.write_epoch("m002", e, bad if e == 1 else zoo.load_checkpoint("m002", e), {})
    store = prepare_store(zoo.path, tmp_path / "store", StoreSettings(epochs=(1, 2)),
                          progress=False)
    assert {e for _, e, _ in store.rows} == {1, 2}
    assert ("m002", 1, _split_of(zoo, "m002")) not in store.rows
    assert store.meta["skipped_non_finite"] == 1 and len(store.rows) == 9


def test_checkpoints_above_max_abs_are_left_out(tmp_path):
    zoo = _zoo(tmp_path / "zoo", n_models=4, epochs=2)
    big = zoo.load_checkpoint("m001", 1)
    big["module_list.0.bias"][0] = -250.0
    zoo.model_dir("m001").joinpath("metrics.json").unlink()
    for e in range(2):
        zoo.write_epoch("m001", e, big if e == 1 else zoo.load_checkpoint("m001", e), {})
    kept = prepare_store(zoo.path, tmp_path / "all", progress=False)
    store = prepare_store(zoo.path, tmp_path / "store", StoreSettings(max_abs=100.0),
                          progress=False)
    assert len(kept.rows) == 8 and len(store.rows) == 7
    assert ("m001", 1, _split_of(zoo, "m001")) not in store.rows
    assert store.meta["skipped_above_max_abs"] == 1 and store.settings.max_abs == 100.0
    with pytest.raises(ConfigError, match="max_abs must be positive"):
        prepare_store(zoo.path, tmp_path / "bad", StoreSettings(max_abs=0.0), progress=False)


def _split_of(zoo, model_id):
    return next(s for s, ids in zoo.split.items() if model_id in ids)


def test_corrupt_store_files_are_reported(zoo, store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    np.save(copy / "mask.npy", np.zeros((3, 3), dtype=bool))
    with pytest.raises(FormatError, match=r"mask\.npy: expected bool"):
        TokenStore.open(copy)
    with pytest.raises(FormatError, match="not a token store"):
        TokenStore.open(tmp_path)


def test_prepare_command(zoo, tmp_path, capsys):
    assert main(["prepare", str(zoo.path), "--out", str(tmp_path / "s"), "--epochs", "0-1",
                 "--token-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "24 checkpoints × 66 tokens × 64 values" in out
    assert main(["prepare", str(tmp_path / "nothing"), "--out", str(tmp_path / "t")]) == 2
    assert "is not a zoo" in capsys.readouterr().err
    assert parse_epochs("21-23,30") == (21, 22, 23, 30) and parse_epochs(None) is None
    with pytest.raises(ConfigError, match="--epochs"):
        parse_epochs("a-b")


def test_windows_shapes_determinism_and_views(store):
    config = WindowConfig(window_size=16, batch_size=5, views=2, multiplicative_noise=0.1)
    sampler = WindowSampler(store, "train", config, seed=3)
    batches = list(sampler.epoch(0))
    assert len(batches) == len(sampler) == len(store.split_rows("train")) // 5
    b = batches[0]
    assert b.tokens.shape == (2, 5, 16, 201) and b.mask.shape == (5, 16, 201)
    assert b.positions.shape == (5, 16, 3) and b.properties.shape == (5, 8)
    assert torch.all(b.tokens[:, ~b.mask] == 0)
    assert not torch.equal(b.tokens[0], b.tokens[1])  # independent augmentations per view
    again = next(WindowSampler(store, "train", config, seed=3).epoch(0))
    assert torch.equal(again.tokens, b.tokens) and torch.equal(again.rows, b.rows)
    assert not torch.equal(next(sampler.epoch(1)).rows, b.rows)
    starts = b.positions[:, 0, 0]
    for j, row in enumerate(b.rows.tolist()):  # positions are those of the window
        assert torch.equal(b.positions[j], store.positions[starts[j] : starts[j] + 16])
        expected = torch.from_numpy(store.properties[row])
        assert torch.allclose(b.properties[j], expected, equal_nan=True)


def test_permuted_full_windows_are_the_same_function(store):
    """A whole-model window under a random permutation, turned back into a model, computes the
    same function as the stored model (the exact gather is checked in test_augment)."""
    config = WindowConfig(window_size=48, batch_size=2, views=1)
    batch = next(WindowSampler(store, "val", config, seed=0).epoch(0))
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for j, row in enumerate(batch.rows.tolist()):
        permuted = store.standardization.invert(detokenize(batch.tokens[0, j], store.manifest))
        original, other = build_model(ARCH).eval(), build_model(ARCH).eval()
        original.load_state_dict(store.state_dict(row))
        other.load_state_dict(permuted)
        assert not torch.equal(permuted["module_list.0.weight"],
                               store.state_dict(row)["module_list.0.weight"])
        with torch.no_grad():
            torch.testing.assert_close(other(x), original(x), rtol=1e-4, atol=1e-4)


def test_unpermuted_noise_free_windows_are_store_slices(store):
    config = WindowConfig(window_size=20, batch_size=3, permute=False)
    batch = next(WindowSampler(store, "test", config, seed=1).epoch(0))
    for j, row in enumerate(batch.rows.tolist()):
        start = int(batch.positions[j, 0, 0])
        expected = torch.from_numpy(np.array(store.tokens[row, start : start + 20]))
        assert torch.equal(batch.tokens[0, j], expected)


def test_window_config_errors(store):
    with pytest.raises(ConfigError, match="window_size must lie in"):
        WindowSampler(store, "train", WindowConfig(window_size=49))
    with pytest.raises(ConfigError, match="split must be"):
        WindowSampler(store, "holdout", WindowConfig(window_size=8))


def test_hyperparameter_zoo_with_mixed_dropout_shares_one_store(tmp_path):
    """Dropout modules shift CNN-s keys (module_list.3 vs .4): the store renames by position."""
    archs = [ArchConfig(dropout=0.5 * (i % 2), activation=["tanh", "relu"][i // 3 % 2])
             for i in range(6)]
    zoo = Zoo.create(tmp_path / "zoo", [ModelEntry(f"m{i}", i, a) for i, a in enumerate(archs)],
                     dataset={"name": "digits"})
    for i, (entry, arch) in enumerate(zip(zoo.models, archs)):
        zoo.write_epoch(entry.id, 0, build_model(arch, seed=i).state_dict(), {})
    store = prepare_store(zoo.path, tmp_path / "store", StoreSettings(align=True),
                          progress=False)
    assert len(store.rows) == 6
    model_id = "m1"  # dropout 0.5: its own keys are module_list.0/4/8/11/14
    row = next(i for i, (m, _, _) in enumerate(store.rows) if m == model_id)
    own = zoo.load_checkpoint(model_id, 0)
    renamed = {}
    for canonical, own_index in [(0, 0), (3, 4), (6, 8), (9, 11), (11, 14)]:
        for leaf in ("weight", "bias"):
            renamed[f"module_list.{canonical}.{leaf}"] = own[f"module_list.{own_index}.{leaf}"]
    expected = store.alignment.apply(model_id, renamed)
    rebuilt = store.state_dict(row)
    for key, value in expected.items():
        torch.testing.assert_close(rebuilt[key], value, rtol=1e-5, atol=1e-6)
    # Every row records its own architecture and rebuilds into it, under its own keys.
    assert len(store.architectures) == 4
    for r, (m, _, _) in enumerate(store.rows):
        assert store.architecture(r) == archs[int(m[1:])]
    net = store.model(row)
    assert net.module_list[4].weight.shape == (6, 8, 5, 5)  # conv after the dropout module
    x = torch.randn(3, 1, 28, 28)
    original = build_model(archs[1])
    original.load_state_dict(own)
    torch.testing.assert_close(net.eval()(x), original.eval()(x), rtol=1e-4, atol=1e-5)


def test_windows_carry_their_clean_version(store):
    noisy = WindowConfig(window_size=12, batch_size=4, views=2, permute=False,
                         multiplicative_noise=0.1)
    clean = dataclasses.replace(noisy, multiplicative_noise=0.0)
    a = next(WindowSampler(store, "train", noisy, seed=5).epoch(0))
    b = next(WindowSampler(store, "train", clean, seed=5).epoch(0))
    assert torch.equal(a.clean, b.tokens) and torch.equal(b.clean, b.tokens)
    assert not torch.equal(a.tokens, a.clean)


def test_canonical_first_view_is_the_stored_window_and_the_others_are_permuted(store):
    config = WindowConfig(window_size=48, batch_size=4, views=3, canonical_first=True)
    batch = next(WindowSampler(store, "train", config, seed=2).epoch(0))
    for j, row in enumerate(batch.rows.tolist()):
        stored = torch.from_numpy(np.array(store.tokens[row]))
        assert torch.equal(batch.tokens[0, j], stored)
        assert not torch.equal(batch.tokens[1, j], stored)
        assert not torch.equal(batch.tokens[1, j], batch.tokens[2, j])


def test_windows_per_checkpoint_passes_over_every_checkpoint_that_often(store):
    rows = len(store.split_rows("train"))
    config = WindowConfig(window_size=8, batch_size=rows, windows_per_checkpoint=3,
                          permute=False)
    sampler = WindowSampler(store, "train", config, seed=0)
    batches = list(sampler.epoch(0))
    assert len(sampler) == len(batches) == 3
    for batch in batches:  # each pass is one permutation of the split's checkpoints
        assert sorted(batch.rows.tolist()) == store.split_rows("train").tolist()
    assert len({tuple(b.rows.tolist()) for b in batches}) == 3
    with pytest.raises(ConfigError, match="windows_per_checkpoint"):
        WindowSampler(store, "train", WindowConfig(window_size=8, windows_per_checkpoint=0))
