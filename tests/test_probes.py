"""Linear probes, store features and `sane probe`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sane.downstream.features as features_module
from sane.cli import build_parser, main
from sane.downstream import (
    LinearProbe,
    ProbeRow,
    baseline_features,
    markdown_table,
    probe_table,
)
from sane.downstream.features import FeatureSet
from sane.downstream.probes import class_markdown_table, class_probe_table
from sane.errors import ConfigError, FormatError
from sane.pipeline import Pipeline
from sane.stages.features import store_embeddings, store_features
from sane.stages.probe import predict_properties
from sane.weights import BASELINES
from sane.zoo import Zoo


def linear_data(m: int, f: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, f)) * rng.uniform(0.1, 100, size=f)  # scales differ per feature
    w = rng.normal(size=f) / x.std(axis=0)
    return x, x @ w + 3.0 + noise * rng.normal(size=m)


def test_probe_recovers_a_linear_relation_and_scores_r2():
    x, y = linear_data(300, 5, 0.01, 0)
    probe = LinearProbe().fit(x[:200], y[:200], validation=(x[200:250], y[200:250]))
    assert probe.score(x[250:], y[250:]) > 0.999
    prediction = probe.predict(x[250:])
    residual = ((y[250:] - prediction) ** 2).sum() / ((y[250:] - y[250:].mean()) ** 2).sum()
    assert probe.score(x[250:], y[250:]) == pytest.approx(1 - residual)
    assert probe.validation_score_ == pytest.approx(probe.score(x[200:250], y[200:250]))


def test_the_validation_split_chooses_the_regularization():
    # 40 noisy samples of a weak signal in 30 features: only strong shrinkage generalizes.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 30))
    y = 0.1 * x.sum(axis=1) + rng.normal(size=400)
    noisy = LinearProbe().fit(x[:40], y[:40], validation=(x[40:], y[40:]))
    clean_x, clean_y = linear_data(200, 3, 0.0, 2)
    clean = LinearProbe().fit(clean_x[:100], clean_y[:100],
                              validation=(clean_x[100:], clean_y[100:]))
    assert noisy.alpha_ >= 30 and clean.alpha_ == min(LinearProbe().alphas)


def test_probe_input_errors():
    x, y = linear_data(20, 3, 0.1, 3)
    with pytest.raises(ConfigError, match="fit the probe"):
        LinearProbe().predict(x)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(FormatError, match="training features hold NaN"):
        LinearProbe().fit(bad, y, validation=(x, y))
    with pytest.raises(FormatError, match=r"validation targets must be \[20\]"):
        LinearProbe().fit(x, y, validation=(x, y[:5]))
    with pytest.raises(FormatError, match="validation features have 2 columns"):
        LinearProbe().fit(x, y, validation=(x[:, :2], y))
    with pytest.raises(ConfigError, match="alphas must be positive"):
        LinearProbe(alphas=(1.0, 0.0))


def test_probe_table_leaves_out_unknown_targets_per_property():
    x, y = linear_data(40, 3, 0.01, 4)
    partly = y.copy()
    partly[:5] = np.nan
    splits = {"train": np.arange(20), "val": np.arange(20, 30), "test": np.arange(30, 40)}
    groups = [f"m{i // 2}" for i in range(40)]  # two checkpoints per model
    rows = probe_table({"a": x, "b": x[:, :1]}, {"y": y, "partly": partly}, splits, groups,
                       resamples=200)
    assert [(r.features, r.property) for r in rows] == [
        ("a", "y"), ("b", "y"), ("a", "partly"), ("b", "partly")]
    assert rows[2].n_train == 15 and rows[0].n_train == 20
    assert rows[0].r2_test > 0.99 and rows[0].tau_test > 0.9
    low, high = rows[1].r2_test_ci
    assert low <= rows[1].r2_test <= high
    assert rows[0].test_truth == y[30:40].tolist() and len(rows[0].test_predicted) == 10
    table = markdown_table(rows)
    assert table.splitlines()[0] == "| property | a | b |"
    assert table.splitlines()[2].startswith(f"| y | {rows[0].r2_test:.3f} [")
    assert markdown_table(rows, "tau").splitlines()[2].startswith(
        f"| y | {rows[0].tau_test:.3f} [")
    unknown = y.copy()
    unknown[30:39] = np.nan
    with pytest.raises(FormatError, match="the test split has 1 rows"):
        probe_table({"a": x}, {"late": unknown}, splits, groups)


def test_table_1_layout_puts_w_then_sw_then_sane():
    scores = dict.fromkeys(("r2_train", "r2_val", "tau_train", "tau_val", "tau_test"), 0.0)
    row = scores | {"r2_test": 0.5, "r2_test_ci": [0.4, 0.6], "tau_test_ci": None,
                    "n_train": 1, "n_val": 1, "n_test": 1, "test_rows": [0],
                    "test_truth": [0.0], "test_predicted": [0.0]}
    rows = [ProbeRow(f, p, **row) for p in ("test_acc", "ggap")
            for f in ("SANE", "sW-layer", "W", "sW-tensor-var")]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| property | W | sW-layer | sW-tensor-var | SANE |"
    assert [line.split(" |")[0] for line in lines[2:]] == ["| Acc", "| GGap"]


def test_classification_probes_beat_the_majority_class_when_features_know():
    rng = np.random.default_rng(0)
    labels = np.array(["relu", "tanh", "gelu"] * 20)
    x = rng.normal(size=(60, 4))
    x[:, 0] += 6 * (labels == "relu") - 6 * (labels == "tanh")
    splits = {"train": np.arange(36), "val": np.arange(36, 48), "test": np.arange(48, 60)}
    rows = class_probe_table({"informed": x, "noise": x[:, 1:]},
                             {"activation": labels, "init": np.array(["u"] * 60)}, splits)
    assert [r.property for r in rows] == ["activation", "activation"]  # one class: left out
    informed, noise = rows
    assert informed.classes == ["gelu", "relu", "tanh"]
    assert informed.majority_test == pytest.approx(1 / 3)
    assert informed.accuracy_test > 0.8 and noise.accuracy_test < 0.7
    assert "| activation | 3 | 0.333 |" in class_markdown_table(rows)


def test_embeddings_are_the_tiled_mean_latents_in_store_order(random_store, tiny_run):
    _, model = tiny_run
    z = store_embeddings(Pipeline(model, random_store.tokenizer), random_store, batch_size=5,
                         progress=False, permutations=0)
    assert z.shape == (36, model.config.d_latent) and z.dtype == np.float64
    with torch.no_grad():
        expected = model.embed(torch.tensor(random_store.tokens[7:9]), random_store.positions,
                               window=model.config.window_size, halo=0)
    np.testing.assert_allclose(z[7:9], expected.double().numpy(), rtol=1e-5, atol=1e-6)


def test_baselines_read_the_store_checkpoints(random_store, monkeypatch):
    states = [random_store.state_dict(r) for r in range(len(random_store.rows))]
    np.testing.assert_array_equal(baseline_features(random_store, "sW-layer"),
                                  BASELINES["sW-layer"](states))
    assert baseline_features(random_store, "W").shape == (36, 2464)
    with pytest.raises(ConfigError, match=r"unknown feature set 'V'; known: SANE, SANE\+std, W"):
        baseline_features(random_store, "V")
    with pytest.raises(ConfigError, match="SANE is no weight baseline"):
        baseline_features(random_store, "SANE")
    monkeypatch.setattr(features_module, "MAX_BASELINE_BYTES", 1000)
    with pytest.raises(ConfigError, match=r"W baseline .* would need"):
        baseline_features(random_store, "W")


@pytest.mark.slow
def test_predict_properties_writes_results_and_embeddings(random_store, tiny_run, tmp_path):
    out, _ = tiny_run
    result = predict_properties(out, tmp_path / "p", progress=False)
    rows = result.rows
    assert {(r.features, r.property) for r in rows} == {
        (f, p) for f in ("SANE", "SANE+std", "W", "sW-layer")
        for p in ("test_acc", "epoch", "ggap")}
    saved = json.loads((tmp_path / "p" / "probes.json").read_text())
    assert saved["store"] == str(random_store.path.resolve())
    assert saved["results"] == [r.to_dict() for r in rows]
    assert np.load(tmp_path / "p" / "embeddings.npy").shape == (36, 16)
    text = (tmp_path / "p" / "probes.md").read_text()
    assert "| Acc |" in text and "## Kendall τ" in text and "![Acc](scatter-test_acc.png)" in text
    for prop in ("test_acc", "epoch", "ggap"):
        assert (tmp_path / "p" / f"scatter-{prop}.png").read_bytes()[:4] == b"\x89PNG"
    assert result.classification == []  # one activation, init and dropout in this zoo
    assert len(result.ood["test"]) == 9 and result.ood["percentile"] == 99.0
    reconstruction = saved["reconstruction"]
    assert result.reconstruction == reconstruction and "| Acc |" in result.markdown()
    assert {s: reconstruction[s]["models"] for s in ("train", "val", "test")} == {
        "train": 8, "val": 1, "test": 3}  # the split of 12 models, each model once
    assert all(0 <= reconstruction[s]["decoded_accuracy"] <= 1 for s in ("train", "val", "test"))
    assert "## Reconstruction by function" in (tmp_path / "p" / "probes.md").read_text()
    with pytest.raises(ConfigError, match="unknown property 'loss'"):
        predict_properties(out, tmp_path / "q", properties=["loss"], progress=False)


def test_sane_std_features_are_the_mean_and_spread_of_the_token_latents(random_store,
                                                                         tiny_run):
    _, model = tiny_run
    features = store_features(random_store, ["SANE+std", "SANE"],
                              Pipeline(model, random_store.tokenizer), progress=False,
                              permutations=0)  # the average over views: tests/test_embed.py
    assert list(features) == ["SANE+std", "SANE"]
    with torch.no_grad():
        z = model.encode_sequence(torch.tensor(np.array(random_store.tokens[:5])),
                                  random_store.positions, window=model.config.window_size,
                                  halo=0).double().numpy()  # [5, N, 16], tiled
    np.testing.assert_allclose(features["SANE+std"][:5],
                               np.concatenate([z.mean(1), z.std(1)], 1), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(features["SANE"], features["SANE+std"][:, :16])
    # The same features of models from anywhere (the pipeline's, which aligns each
    # checkpoint on its own): mean and spread of their token latents.
    zoo = Zoo.open(random_store.zoo_path)
    states = [zoo.load_checkpoint(m, e) for m, e, *_ in random_store.rows[:3]]
    pipe = Pipeline(model, random_store.tokenizer)
    n = random_store.tokenizer.manifest.num_tokens
    tokens = torch.stack([random_store.tokenizer.reader(s)(0, n) for s in states])
    with torch.no_grad():
        z = model.encode_sequence(tokens, random_store.positions,
                                  window=model.config.window_size, halo=0).double().numpy()
    np.testing.assert_allclose(pipe.embed(states, spread=True, permutations=0),
                               [np.concatenate([a.mean(0), a.std(0)]) for a in z], rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_array_equal(pipe.embed(states), pipe.embed(states, spread=True)[:, :16])


def test_feature_sets_are_named_once():
    # the names results record on disk, each parsed to its member, an unknown one refused
    # naming every known one
    assert [f.value for f in FeatureSet] == ["SANE", "SANE+std", "W", "sW-tensor-var",
                                             "sW-tensor-std", "sW-layer", "NFN"]
    assert FeatureSet.parse("SANE+std") is FeatureSet.SANE_STD == "SANE+std"
    assert FeatureSet.parse(FeatureSet.W) is FeatureSet.W
    assert json.dumps({FeatureSet.SW_LAYER: [FeatureSet.NFN]}) == '{"sW-layer": ["NFN"]}'
    assert {f for f in FeatureSet if f.is_baseline} == set(BASELINES)
    assert [f for f in FeatureSet if f.from_sane] == [FeatureSet.SANE, FeatureSet.SANE_STD]
    with pytest.raises(ConfigError) as error:
        FeatureSet.parse("sW")
    assert str(error.value) == ("unknown feature set 'sW'; known: SANE, SANE+std, W, "
                                "sW-tensor-var, sW-tensor-std, sW-layer, NFN")


def test_cli_probe(random_store, tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    assert main(["probe", str(out), "--out", str(tmp_path / "a"), "--features", "SANE",
                 "--properties", "epoch"]) == 0
    assert "| Ep |" in capsys.readouterr().out
    assert main(["probe", "--store", str(random_store.path), "--out", str(tmp_path / "b"),
                 "--features", "sW-layer"]) == 0
    assert not (tmp_path / "b" / "embeddings.npy").exists()
    assert main(["probe", "--store", str(random_store.path), "--out", str(tmp_path / "c")]) == 2
    assert "need a pretraining run" in capsys.readouterr().err
    assert main(["probe", "--store", str(random_store.path), "--out", str(tmp_path / "d"),
                 "--features", "sW-layer,S"]) == 2
    assert "unknown feature set 'S'; known: SANE, SANE+std" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    commands = next(a for a in build_parser()._actions if a.choices and "probe" in a.choices)
    option = next(a for a in commands.choices["probe"]._actions if a.dest == "features")
    assert all(f"{f}," in option.help or f"{f} (" in option.help for f in FeatureSet)


def test_probe_predicts_another_zoo_and_flags_models_unlike_the_training_zoo(random_store,
                                                                            tiny_run,
                                                                            tmp_path, capsys):
    """Models far from the zoo (its weights scaled 50×) are flagged; the zoo's own models
    lie within its spacing; every probe predicts every model's last checkpoint."""
    zoo = Zoo.open(random_store.zoo_path)
    far = Zoo.create(tmp_path / "far", zoo.models[:3], dataset=zoo.dataset)
    for entry in far.models:
        state = zoo.load_checkpoint(entry.id, 2)
        far.write_epoch(entry.id, 2, {k: 50 * v for k, v in state.items()}, {"test_acc": 0.1})
    out, _ = tiny_run
    assert main(["probe", str(out), "--out", str(tmp_path / "p"), "--predict",
                 str(far.path)]) == 0
    assert "3 checkpoints of" in capsys.readouterr().out
    saved = json.loads((tmp_path / "p" / "probes.json").read_text())
    assert [p["model"] for p in saved["predictions"]] == [m.id for m in zoo.models[:3]]
    # flagged in both spaces: 50x the weights is 50x their statistics and far from the zoo
    assert all(p["ood"] and p["distance"] > 1 and p["spaces"] == ["SANE", "sW-layer"]
               for p in saved["predictions"])
    assert all(p["distances"][s] > saved["ood"]["thresholds"][s]
               for p in saved["predictions"] for s in ("SANE", "sW-layer"))
    assert set(saved["predictions"][0]["predicted"]) == {
        f"{p}/{f}" for p in ("test_acc", "epoch", "ggap")
        for f in ("SANE", "SANE+std", "W", "sW-layer")}
    assert "## Predictions for another zoo" in (tmp_path / "p" / "probes.md").read_text()
    same = predict_properties(out, tmp_path / "q", features=["SANE"], predict=zoo.path,
                              progress=False)
    train = {random_store.rows[r][0] for r in random_store.split_rows("train").tolist()}
    # the training models' last checkpoints are in the reference; held-out ones lie about as
    # far from it as the zoo's models lie from each other (8 random models leave the 99th
    # percentile to their largest distance, so one may just cross it), far below 50x
    assert all(p["distance"] < 1e-4 and not p["ood"] for p in same.predictions
               if p["model"] in train)
    held_out = [p["distance"] for p in same.predictions if p["model"] not in train]
    assert len(held_out) == 4 and max(held_out) < 1.5
    assert min(p["distance"] for p in saved["predictions"]) > 10
