"""Out-of-distribution references: thresholds, standardization, spaces, files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import save_file

from sane.cli import main
from sane.downstream.features import PERMUTATIONS
from sane.downstream.ood import OODReference
from sane.errors import ConfigError, FormatError
from sane.zoo import Zoo

# Ten models on a line one apart, two checkpoints each at the same place; a second feature
# constant over the reference.
LINE = np.repeat(np.arange(10.0), 2)[:, None] * np.array([[1.0, 0.0]])
MODELS = np.repeat([f"m{i}" for i in range(10)], 2).tolist()
SPREAD = np.arange(10.0).std()


def test_threshold_is_the_percentile_of_standardized_distances_to_other_models():
    reference = OODReference.fit({"SANE": LINE}, MODELS)
    # the nearest other model is one unit away for every checkpoint: one standard deviation
    # of the first feature
    assert reference.thresholds == {"SANE": pytest.approx(1 / SPREAD)}
    flags = reference.flags({"SANE": np.array([[4.5, 0.0], [20.0, 0.0], [4.0, 0.5]])})
    assert [f["ood"] for f in flags] == [False, True, True]
    assert flags[0]["distance"] == pytest.approx(0.5)  # half the spacing: half the threshold
    assert flags[1]["distance"] == pytest.approx(11.0)
    # a feature constant over the reference keeps its units: 0.5 away is 0.5 · SPREAD thresholds
    assert flags[2]["distances"] == {"SANE": pytest.approx(0.5)}
    assert flags[2]["distance"] == pytest.approx(0.5 * SPREAD)


def test_distances_do_not_depend_on_the_units_of_a_feature():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 3))
    queries = rng.normal(size=(5, 3)) * 2
    units = np.array([1.0, 1000.0, 0.001])
    plain = OODReference.fit({"sW-layer": features}, MODELS).flags({"sW-layer": queries})
    scaled = OODReference.fit({"sW-layer": features * units}, MODELS).flags(
        {"sW-layer": queries * units})
    assert [f["ood"] for f in plain] == [f["ood"] for f in scaled]
    np.testing.assert_allclose([f["distance"] for f in plain], [f["distance"] for f in scaled])


def test_a_query_beyond_the_threshold_in_any_space_is_flagged():
    reference = OODReference.fit({"SANE": LINE, "sW-layer": LINE[:, :1] * 3}, MODELS)
    flags = reference.flags({"SANE": np.array([[4.0, 0.0], [4.0, 0.0], [30.0, 0.0]]),
                             "sW-layer": np.array([[12.0], [60.0], [60.0]])})
    assert [(f["ood"], f["spaces"]) for f in flags] == [
        (False, []), (True, ["sW-layer"]), (True, ["SANE", "sW-layer"])]
    assert flags[1]["distance"] == pytest.approx(11.0)  # (60 - 27) / 3 spacings
    assert flags[2]["distance"] == pytest.approx(max(21.0, 11.0))


def test_bad_references_and_queries_are_refused():
    with pytest.raises(ConfigError, match="at least two models"):
        OODReference.fit({"SANE": LINE[:2]}, MODELS[:2])
    with pytest.raises(ConfigError, match="spaces must be some of SANE, sW-layer"):
        OODReference.fit({"W": LINE}, MODELS)
    with pytest.raises(FormatError, match="finite"):
        OODReference.fit({"SANE": np.where(LINE == 3, np.nan, LINE)}, MODELS)
    reference = OODReference.fit({"SANE": LINE, "sW-layer": LINE}, MODELS)
    with pytest.raises(FormatError, match="lack the sW-layer features"):
        reference.flags({"SANE": LINE})
    with pytest.raises(FormatError, match=r"SANE queries must be \[Q, 2\], got \[1, 3\]"):
        reference.flags({"SANE": np.zeros((1, 3)), "sW-layer": np.zeros((1, 2))})
    with pytest.raises(FormatError, match="non-finite"):
        reference.flags({"SANE": np.full((1, 2), np.inf), "sW-layer": np.zeros((1, 2))})
    with pytest.raises(FormatError, match="different numbers of rows"):
        reference.flags({"SANE": np.zeros((1, 2)), "sW-layer": np.zeros((2, 2))})


def test_a_reference_round_trips(tmp_path):
    reference = OODReference.fit({"SANE": np.eye(4), "sW-layer": np.eye(4)[:, :2]},
                                 ["a", "b", "c", "d"], percentile=50.0)
    reference.save(tmp_path)
    loaded = OODReference.load(tmp_path)
    assert loaded.thresholds == reference.thresholds and loaded.models == ["a", "b", "c", "d"]
    assert loaded.percentile == 50.0
    np.testing.assert_array_equal(loaded.features["SANE"], np.eye(4))
    np.testing.assert_array_equal(loaded.features["sW-layer"], np.eye(4)[:, :2])
    assert OODReference.load(tmp_path / "none") is None
    meta = json.loads((tmp_path / "ood.json").read_text())
    (tmp_path / "ood.json").write_text(json.dumps(meta | {"spaces": ["SANE", "W"]}))
    with pytest.raises(FormatError, match=r"ood\.json: malformed"):
        OODReference.load(tmp_path)


def test_a_run_rebuilds_a_reference_of_an_earlier_sane(tiny_run, random_store, tmp_path):
    """A version-1 reference (SANE distances only) is refused with the way to rebuild it,
    and rerunning the finished pretraining does rebuild it, with both spaces."""
    run = shutil.copytree(tiny_run[0], tmp_path / "run")
    expected = OODReference.load(run)
    assert set(expected.features) == {"SANE", "sW-layer"}
    for space in expected.features:
        (run / f"ood-{space}.npy").unlink()
    np.save(run / "ood.npy", expected.features["SANE"])
    (run / "ood.json").write_text(json.dumps({
        "format": "sane-ood-reference", "version": 1, "threshold": 1.0, "percentile": 99.0,
        "models": expected.models}))
    with pytest.raises(FormatError, match="rerun the same `sane pretrain` command"):
        OODReference.load(run)
    # version 2: embeddings of haloed views, which no longer match `sane embed`'s
    (run / "ood.json").write_text(json.dumps({**json.loads((run / "ood.json").read_text()),
                                              "version": 2}))
    with pytest.raises(FormatError, match=r"haloed views.*remove .*ood-\*\.npy and rerun the "
                                          "same `sane pretrain` command"):
        OODReference.load(run)
    (run / "ood.json").unlink()
    (run / "ood.npy").unlink()
    config = tmp_path / "tiny.toml"  # that of tiny_run
    config.write_text('preset = "tiny"\nepochs = 1\nbatch_size = 8\n'
                      '[model]\nd_model = 32\nn_layers = 1\n')
    before = (run / "model.safetensors").read_bytes()
    precision = json.loads((run / "run.json").read_text())["pretrain"]["precision"]
    assert main(["pretrain", str(random_store.path), "--out", str(run), "--config",
                 str(config), "--precision", precision]) == 0
    assert (run / "model.safetensors").read_bytes() == before  # nothing trained again
    rebuilt = OODReference.load(run)
    assert rebuilt.thresholds == pytest.approx(expected.thresholds)
    for space in expected.features:
        np.testing.assert_allclose(rebuilt.features[space], expected.features[space])


def test_embed_flags_checkpoints_unlike_the_training_zoo(tiny_run, random_store, tmp_path,
                                                         capsys):
    zoo = Zoo.open(random_store.zoo_path)
    train_model = random_store.rows[int(random_store.split_rows("train")[0])][0]
    state = zoo.load_checkpoint(train_model, 2)
    near, far = tmp_path / "near.safetensors", tmp_path / "far.safetensors"
    save_file(state, str(near))
    save_file({k: 50 * v for k, v in state.items()}, str(far))
    out = tmp_path / "e.npy"
    assert main(["embed", str(tiny_run[0]), str(near), str(far), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"out of distribution: {far} (SANE " in printed and str(near) not in printed
    saved = json.loads(out.with_suffix(".ood.json").read_text())
    assert saved["spaces"] == ["SANE", "sW-layer"] and saved["percentile"] == 99.0
    first, second = saved["checkpoints"]
    # a training checkpoint is in the reference: distance 0 in both spaces
    assert not first["ood"] and first["distance"] < 1e-4
    assert second["ood"] and second["spaces"] == ["SANE", "sW-layer"]
    assert all(second["distances"][s] > saved["thresholds"][s] for s in saved["spaces"])
    # flags need embeddings made as the reference's were
    assert saved["permutations"] == PERMUTATIONS
    assert main(["embed", str(tiny_run[0]), str(far), "--out", str(tmp_path / "f.npy"),
                 "--permutations", "0"]) == 0
    assert (f"no out-of-distribution flags: the reference's embeddings average {PERMUTATIONS} "
            f"permutations; embed with --permutations {PERMUTATIONS} to flag"
            ) in capsys.readouterr().out
    assert not (tmp_path / "f.ood.json").exists()


def test_the_commands_state_the_default_number_of_permutations(capsys):
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    assert f"default {PERMUTATIONS})" in " ".join(capsys.readouterr().out.split())
