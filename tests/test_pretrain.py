"""Pretraining SANE on a token store: learning, run files, determinism, exact resume, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from sane import SANE
from sane.cli import main
from sane.errors import ConfigError, FormatError
from sane.train import PretrainConfig, WindowSampler, load_pretrain_config, pretrain, pretraining

# fp32: runs compared bit for bit must not depend on what "auto" measures on a busy machine
FAST = PretrainConfig(preset="tiny", epochs=3, batch_size=8, precision="fp32",
                      model={"d_model": 32, "n_layers": 1})


@pytest.fixture(scope="module")
def store(random_store):
    return random_store


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, pretrain(store.path, out, FAST, progress=False).model


def weights(out):
    """Model and optimizer state of a run's last finished epoch."""
    return load_file(str(out / "training.safetensors"))


def history(out):
    return json.loads((out / "history.json").read_text())


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pretraining_learns_and_leaves_a_loadable_model(run):
    out, model = run
    epochs = history(out)
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[-1]["train_reconstruction"] < epochs[0]["train_reconstruction"]
    assert epochs[-1]["val_reconstruction"] < epochs[0]["val_reconstruction"]
    assert epochs[-1]["val_r2"] > epochs[0]["val_r2"]
    loaded = SANE.from_pretrained(out)
    assert loaded.config == model.config and loaded.config.token_size == 201
    assert loaded.config.max_positions == (48, 5, 20)  # the store's (n, l, k) extent
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert "| epoch | train_loss |" in (out / "report.md").read_text()
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_epoch_decodes_whole_models_and_the_last_measures_accuracy(run):
    out, _ = run
    epochs = history(out)
    assert all(-10 < r["train_model_r2"] <= 1 and -10 < r["val_model_r2"] <= 1 for r in epochs)
    assert [("fidelity" in r) for r in epochs] == [False, False, True]
    fidelity = epochs[-1]["fidelity"]
    assert set(fidelity) == {"train", "val"}
    train = fidelity["train"]
    assert train["models"] == 8 and len(train["layer_r2"]) == 5  # each model's last epoch
    assert train["r2"] == pytest.approx(epochs[-1]["train_model_r2"])
    assert 0 <= train["decoded_accuracy"] <= 1 and 0 <= train["accuracy"] <= 1
    assert "## Reconstruction by function" in (out / "report.md").read_text()


@pytest.mark.slow
def test_bf16_autocast_trains(store, tmp_path):
    config = PretrainConfig(preset="tiny", epochs=1, batch_size=8, precision="bf16",
                            model=FAST.model)
    pretrain(store.path, tmp_path / "run", config, progress=False)
    assert 0 < history(tmp_path / "run")[0]["train_reconstruction"] < 10
    with pytest.raises(ConfigError, match="precision must be"):
        PretrainConfig(precision="fp16")


@pytest.mark.parametrize("slow, chosen", [("bf16", "fp32"), ("fp32", "bf16")])
def test_auto_precision_takes_the_faster_measured_and_records_it(store, tmp_path, monkeypatch,
                                                                  slow, chosen):
    def timed(model, optimizer, batch, config, device):  # a forced slow path: 100 s more
        return original(model, optimizer, batch, config, device) + 100 * (config.precision == slow)

    original = pretraining._timed_step
    monkeypatch.setattr(pretraining, "_timed_step", timed)
    auto = dataclasses.replace(FAST, epochs=1, precision="auto")
    pretrain(store.path, tmp_path / "auto", auto, progress=False)
    record = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert record["pretrain"]["precision"] == record["auto_precision"]["chosen"] == chosen
    seconds = record["auto_precision"]["seconds_per_step"]
    assert seconds[slow] > 100 > seconds[chosen] > 0
    # measuring changed neither the initial weights nor the random stream of training
    pretrain(store.path, tmp_path / "set", dataclasses.replace(auto, precision=chosen),
             progress=False)
    assert_same_tensors(weights(tmp_path / "auto"), weights(tmp_path / "set"))
    # a rerun (a resume) computes in the recorded precision, measuring nothing
    monkeypatch.setattr(pretraining, "_timed_step", None)
    pretrain(store.path, tmp_path / "auto", auto, progress=False)
    assert json.loads((tmp_path / "auto" / "run.json").read_text()) == record


@pytest.mark.slow
def test_same_seed_gives_the_same_weights_and_a_rerun_changes_nothing(store, run, tmp_path):
    out, _ = run
    again = tmp_path / "again"
    pretrain(store.path, again, FAST, progress=False)
    assert_same_tensors(weights(again), weights(out))
    stamp = (again / "training.safetensors").stat().st_mtime_ns
    result = pretrain(store.path, again, FAST, progress=False)  # finished: nothing to do
    assert (again / "training.safetensors").stat().st_mtime_ns == stamp
    assert result.history == history(again) and result.path == again
    assert result.fidelity == history(again)[-1]["fidelity"]


@pytest.mark.slow
def test_a_run_interrupted_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(
    store, run, tmp_path, monkeypatch
):
    out, _ = run
    original = WindowSampler.epoch

    def crash_in_epoch_2(self, epoch):
        for step, batch in enumerate(original(self, epoch)):
            if epoch == 2 and step == 3 and self.rows[0] == store.split_rows("train")[0]:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(WindowSampler, "epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        pretrain(store.path, tmp_path / "crashed", FAST, progress=False)
    assert [r["epoch"] for r in history(tmp_path / "crashed")] == [1]
    monkeypatch.setattr(WindowSampler, "epoch", original)
    pretrain(store.path, tmp_path / "crashed", FAST, progress=False)
    assert_same_tensors(weights(tmp_path / "crashed"), weights(out))  # bit for bit
    assert history(tmp_path / "crashed")[-1]["val_loss"] == history(out)[-1]["val_loss"]


def test_another_config_or_a_foreign_directory_is_refused(store, run, tmp_path):
    out, _ = run
    with pytest.raises(ConfigError, match="another store or config"):
        pretrain(store.path, out, PretrainConfig(epochs=4, batch_size=8,
                                                 model=FAST.model), progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a pretraining run"):
        pretrain(store.path, tmp_path / "other", FAST, progress=False)


@pytest.mark.parametrize(("config", "message"), [
    (PretrainConfig(batch_size=512), "make no full batch of 512"),
    (PretrainConfig(model={"window_size": 64}), "window_size 64 exceeds the 48 tokens"),
    (PretrainConfig(model={"token_size": 100}), "token_size 100 differs"),
    (PretrainConfig(model={"max_positions": [48, 5, 4]}), "do not cover"),
    (PretrainConfig(model={"depth": 3}), "unknown key"),
    (PretrainConfig(device="gpu"), "'gpu' is not a torch device"),
])
def test_configs_that_do_not_fit_the_store_are_refused_before_anything_is_written(
    store, tmp_path, config, message
):
    with pytest.raises(ConfigError, match=message):
        pretrain(store.path, tmp_path / "run", config, progress=False)
    assert not (tmp_path / "run").exists()


def test_config_file_and_overrides(tmp_path):
    file = tmp_path / "pretrain.toml"
    file.write_text('preset = "small"\nepochs = 7\n[model]\nd_latent = 8\n')
    config = load_pretrain_config(file, epochs=2, lr=None)
    assert (config.preset, config.epochs, dict(config.model)) == ("small", 2, {"d_latent": 8})
    file.write_text("epoch = 7\n")
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        load_pretrain_config(file)
    file.write_text('gamma = "high"\n')
    with pytest.raises(ConfigError, match="gamma: expected a number"):
        load_pretrain_config(file)
    with pytest.raises(ConfigError, match="gamma must be in"):
        load_pretrain_config(gamma=1.5)
    with pytest.raises(ConfigError, match="preset must be one of"):
        load_pretrain_config(preset="huge")
    with pytest.raises(ConfigError, match="latent_noise must be non-negative"):
        load_pretrain_config(latent_noise=-0.1)


@pytest.mark.slow
def test_cli_pretrain(store, tmp_path, capsys):
    args = ["pretrain", str(store.path), "--out", str(tmp_path / "r"), "--epochs", "1",
            "--batch-size", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "sane.SANE.from_pretrained" in out
    assert main(["pretrain", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "is not a token store" in capsys.readouterr().err


def test_a_diverging_run_stops_with_the_epoch_and_step_and_saves_nothing(store, tmp_path,
                                                                         monkeypatch):
    import sane.train.pretraining as module

    original = module.nt_xent

    def nan_contrast(*args, **kwargs):
        return original(*args, **kwargs) * float("nan")

    monkeypatch.setattr(module, "nt_xent", nan_contrast)
    with pytest.raises(FormatError, match="diverged: the loss is nan at epoch 1, step 1"):
        pretrain(store.path, tmp_path / "run", FAST, progress=False)
    assert not (tmp_path / "run" / "training.safetensors").exists()


def test_a_store_without_permutation_spec_needs_permute_off(store, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store.path, copy)
    meta = json.loads((copy / "tokenizer.json").read_text())
    (copy / "tokenizer.json").write_text(json.dumps({**meta, "permutation_spec": None,
                                                      "aligned": False}))
    with pytest.raises(ConfigError, match="set `permute = false`"):
        pretrain(copy, tmp_path / "run", FAST, progress=False)
    config = PretrainConfig(preset="tiny", epochs=1, batch_size=8, permute=False,
                            model=FAST.model)
    assert pretrain(copy, tmp_path / "run", config, progress=False).model.config.token_size == 201


def test_run_store_finds_the_store_of_a_run(store, run, tmp_path):
    from sane.run import Run

    out, _ = run
    assert Run(out).store().path.resolve() == store.path.resolve()
    assert Run(tmp_path).store(store.path).path == store.path
    with pytest.raises(FormatError, match="is not a pretraining run"):
        Run(tmp_path).store()
