"""The NFN probe: a permutation-invariant neural functional trained on the store's
checkpoints, and its row in `sane probe`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from sane.cli import main
from sane.downstream.features import nfn_predictions
from sane.downstream.nfn_probe import NFNConfig, NFNProbe, layer_chain, require_nfn
from sane.downstream.probes import Predicted, markdown_table, probe_table
from sane.errors import ConfigError
from sane.stages.probe import predict_properties
from sane.weights.permutations import apply_permutation, permutation_spec, random_permutation
from sane.zoo import ArchConfig, build_model

TINY = NFNConfig(channels=((4,),), head=16, epochs=3, batch_size=8)


def needs_nfn():
    pytest.importorskip("nfn", reason="the NFN probe needs pip install 'sane[nfn]'")


def scaled_zoo(count: int, seed: int):
    """``count`` random CNN-s, each with all its weights scaled by a factor in [0.5, 2]: the
    factor is a property of the model that no permutation changes."""
    arch = ArchConfig(name="cnn_s")
    factors = np.random.default_rng(seed).uniform(0.5, 2.0, count)
    states = [{k: float(a) * v for k, v in build_model(arch, seed=seed + i).state_dict().items()}
              for i, a in enumerate(factors)]
    return states, factors, permutation_spec(build_model(arch))


def test_predictions_do_not_change_when_hidden_neurons_are_permuted(random_store):
    needs_nfn()
    rows = range(len(random_store.rows))
    states = [random_store.state_dict(r) for r in rows]
    y = np.column_stack([random_store.property("test_acc"), random_store.property("epoch")])
    train, val = random_store.split_rows("train"), random_store.split_rows("val")
    probe = NFNProbe(random_store.spec, TINY).fit(
        [states[r] for r in train], y[train], validation=([states[r] for r in val], y[val]))
    test = [states[r] for r in random_store.split_rows("test")]
    predicted = probe.predict(test)
    assert predicted.shape == (9, 2) and np.ptp(predicted, axis=0).min() > 1e-4  # not constant
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        perm = random_permutation(random_store.spec, generator)
        permuted = probe.predict([apply_permutation(s, random_store.spec, perm) for s in test])
        np.testing.assert_allclose(permuted, predicted, rtol=1e-5, atol=1e-6)
    # what is not a symmetry changes them: scaling one hidden neuron's incoming weights
    key = "module_list.3.weight"
    edited = [{**s, key: s[key] * torch.where(torch.arange(6) == 0, 3.0, 1.0)[:, None, None,
                                                                               None]}
              for s in test]
    assert np.abs(probe.predict(edited) - predicted).max() > 1e-4


def test_the_same_seed_gives_the_same_probe_and_another_seed_another(random_store):
    needs_nfn()
    states, factors, spec = scaled_zoo(20, 0)
    y = factors[:, None]

    def fit(seed):
        config = NFNConfig(channels=((4,),), head=16, epochs=3, batch_size=8, seed=seed)
        return NFNProbe(spec, config).fit(states[:14], y[:14],
                                          validation=(states[14:], y[14:]))

    first, again, other = fit(0), fit(0), fit(1)
    np.testing.assert_array_equal(first.predict(states), again.predict(states))
    def untimed(probe):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in probe.history_]

    assert untimed(first) == untimed(again) and first.selected_ == again.selected_
    assert not np.array_equal(first.predict(states), other.predict(states))


def test_the_probe_learns_an_invariant_property_and_validation_picks_size_and_epoch():
    needs_nfn()
    states, factors, spec = scaled_zoo(80, 10)
    # two properties: the scale, and a constant offset of its negative (a different target)
    y = np.column_stack([factors, 5 - 2 * factors])
    config = NFNConfig(channels=((4,), (4, 4)), head=32, epochs=30, patience=4, batch_size=8)
    probe = NFNProbe(spec, config).fit(states[:50], y[:50],
                                       validation=(states[50:65], y[50:65]))
    assert (probe.score(states[65:], y[65:]) > 0.9).all()
    np.testing.assert_allclose(probe.score(states[50:65], y[50:65]),
                               [s["validation_r2"] for s in probe.selected_], rtol=1e-5)
    for p, selected in enumerate(probe.selected_):
        best = max(probe.history_, key=lambda h: h["validation_r2"][p])
        assert selected == {"channels": best["channels"], "epoch": best["epoch"],
                            "validation_r2": best["validation_r2"][p]}
    for channels in ([4], [4, 4]):  # each size stops `patience` epochs after its last gain
        curve = [h["validation_r2"] for h in probe.history_ if h["channels"] == channels]
        last_gain = max(max(range(len(curve)), key=lambda e, p=p: curve[e][p])
                        for p in range(2))
        assert len(curve) == config.epochs or len(curve) == last_gain + 1 + config.patience
    assert probe.seconds_ > 0


def test_the_chain_refuses_what_is_not_a_feed_forward_net():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.c(h + torch.relu(self.b(h)))

    residual = Residual()
    with pytest.raises(ConfigError, match=r"'b.weight' shares its output permutation"):
        layer_chain(residual.state_dict(), permutation_spec(residual))
    no_bias = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ConfigError, match=r"feed-forward chain .* '0.weight' has no bias"):
        layer_chain(no_bias.state_dict(), permutation_spec(no_bias))
    cnn = build_model(ArchConfig(name="cnn_s"))
    chain = layer_chain(cnn.state_dict(), permutation_spec(cnn))
    assert [(c.weight, c.inputs) for c in chain] == [
        ("module_list.0.weight", 1), ("module_list.3.weight", 8), ("module_list.6.weight", 6),
        ("module_list.9.weight", 4), ("module_list.11.weight", 20)]
    with pytest.raises(ConfigError, match="channels must be"):
        NFNConfig(channels=((4, 0),))


def test_without_the_nfn_package_the_error_names_the_extra(random_store, tmp_path,
                                                           monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nfn", None)  # import nfn raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'sane\[nfn\]'"):
        require_nfn()
    with pytest.raises(ConfigError, match=r"sane\[nfn\]"):
        NFNProbe(random_store.spec).fit([random_store.state_dict(0)] * 2, np.ones((2, 1)),
                                        validation=([random_store.state_dict(1)] * 2,
                                                    np.ones((2, 1))))
    assert main(["probe", "--store", str(random_store.path), "--out", str(tmp_path / "p"),
                 "--features", "sW-layer,NFN"]) == 2
    assert "pip install 'sane[nfn]'" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # refused before any work


def test_probe_table_scores_given_predictions_as_it_scores_probes():
    rng = np.random.default_rng(0)
    y = rng.normal(size=40)
    splits = {"train": np.arange(20), "val": np.arange(20, 30), "test": np.arange(30, 40)}
    groups = [f"m{i // 2}" for i in range(40)]
    x = np.column_stack([y, rng.normal(size=40)])
    ridge = probe_table({"sW-layer": x}, {"y": y}, splits, groups, resamples=50)[0]
    values = np.zeros(40)
    values[splits["test"]] = ridge.test_predicted
    given = Predicted(values, {"epoch": 3}, extra=np.array([1.0, 2.0]))
    rows = probe_table({}, {"y": y}, splits, groups, resamples=50,
                       predicted={"NFN": {"y": given}})
    assert len(rows) == 1 and rows[0].selected == {"epoch": 3} and rows[0].alpha is None
    assert rows[0].extra_predicted == [1.0, 2.0]
    for key in ("r2_test", "tau_test", "r2_test_ci", "tau_test_ci", "test_predicted"):
        assert getattr(rows[0], key) == getattr(ridge, key)
    assert markdown_table([ridge, *rows]).splitlines()[0] == "| property | sW-layer | NFN |"


def test_sane_probe_reports_the_nfn_row_beside_the_baselines(random_store, tmp_path):
    needs_nfn()
    result = predict_properties(None, tmp_path / "p", store=random_store.path,
                                features=["sW-layer", "NFN"], nfn=TINY, progress=False)
    nfn_rows = [r for r in result.rows if r.features == "NFN"]
    assert [r.property for r in nfn_rows] == ["test_acc", "epoch", "ggap"]
    assert all(r.selected["channels"] == [4] and r.n_test == 9 for r in nfn_rows)
    saved = json.loads((tmp_path / "p" / "probes.json").read_text())
    assert saved["nfn"]["config"] == TINY.to_dict() and saved["nfn"]["seconds"] > 0
    assert saved["nfn"]["train_checkpoints"] == 24 and saved["pretraining_seconds"] is None
    assert len(saved["nfn"]["history"]) == 3 and result.nfn == saved["nfn"]
    text = (tmp_path / "p" / "probes.md").read_text()
    assert "| property | sW-layer | NFN |" in text and "## NFN probe" in text
    # the predictions come from a probe fitted on the training split's store checkpoints
    targets = {p: random_store.property(p) for p in ("test_acc", "epoch", "ggap")}
    predicted, _ = nfn_predictions(random_store, targets, TINY, progress=False)
    test = random_store.split_rows("test")
    for row in nfn_rows:
        np.testing.assert_array_equal(row.test_predicted,
                                      predicted[row.property].values[test])


def test_cli_probe_with_nfn_reports_its_time_beside_pretraining_and_predicts_another_zoo(
        random_store, tiny_run, tmp_path, capsys):
    needs_nfn()
    from sane.zoo import Zoo

    zoo = Zoo.open(random_store.zoo_path)
    out, _ = tiny_run
    assert main(["probe", str(out), "--out", str(tmp_path / "p"), "--features",
                 "SANE,NFN", "--properties", "test_acc", "--predict", str(zoo.path)]) == 0
    printed = capsys.readouterr().out
    assert "NFN training" in printed and "SANE pretraining" in printed
    saved = json.loads((tmp_path / "p" / "probes.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert saved["pretraining_seconds"] == pytest.approx(sum(h["seconds"] for h in history))
    assert all(set(p["predicted"]) == {"test_acc/SANE", "test_acc/NFN"}
               for p in saved["predictions"])
    assert len(saved["predictions"]) == 12
