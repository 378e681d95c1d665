"""Sampling for an architecture SANE was not pretrained on: positions mapped into the
pretrained layout, prompts from a zoo of the target architecture (`--prompts-from`)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sampling_helpers import IdentitySANE
from sane.cli import main
from sane.downstream.sampling import SamplingConfig
from sane.errors import FormatError
from sane.stages.prompts import zoo_prompts
from sane.train import PretrainConfig, pretrain
from sane.weights import make_manifest
from sane.weights.positions import relative_positions
from sane.weights.tokenizer import Tokenizer
from sane.zoo import ArchConfig, ModelEntry, Zoo, build_model, load_config, train_population


def _manifest(name: str, token_size: int = 201):
    model = build_model(ArchConfig(name=name))
    return make_manifest(model.state_dict(), token_size, model=model)


def test_a_layout_maps_onto_itself_and_others_into_the_pretrained_range():
    source = _manifest("cnn_s")
    assert torch.equal(relative_positions(source, source), source.positions())
    for name in ("cnn_s_wide", "cnn_s_deep"):
        target = _manifest(name)
        mapped = relative_positions(source, target)
        assert mapped.shape == (target.num_tokens, 3)
        limits = source.positions().max(dim=0).values
        assert (mapped >= 0).all() and (mapped <= limits).all()
        layer = target.positions()[:, 1]
        first, last = layer == 0, layer == len(target.layers) - 1
        # First layer to first, last to last; each mapped position is a source token's.
        assert (mapped[first, 1] == 0).all() and (mapped[last, 1] == 4).all()
        assert torch.equal(source.positions()[mapped[:, 0]], mapped)
    deep = relative_positions(source, _manifest("cnn_s_deep"))
    assert deep[:, 1].unique().tolist() == [0, 1, 2, 3, 4]  # 6 layers onto 5
    wide = _manifest("cnn_s_wide")  # 16 rows of the first layer onto 8: two to a row
    assert relative_positions(source, wide)[:4, 2].tolist() == [0, 0, 1, 1]
    with pytest.raises(FormatError, match="tokenize the target with token_size=201"):
        relative_positions(source, _manifest("cnn_s_wide", 100))


@pytest.fixture(scope="module")
def wide_zoo(tmp_path_factory):
    """3 wider CNN-s trained for 2 epochs on the digits: prompts of a new architecture."""
    return _zoo(tmp_path_factory, "cnn_s_wide", models=3, epochs=2)


@pytest.mark.slow
def test_an_exact_autoencoder_samples_the_target_prompts_themselves(trained_store, wide_zoo,
                                                                    monkeypatch, tmp_path):
    """Through the whole target path (tokenizer fitted on the prompt zoo, relative positions,
    decoding into the wider architecture), no noise and an identity autoencoder give back
    the prompts, which score what they scored in training."""
    from sane.stages import sample as stage

    trained_store.tokenizer.save_pretrained(tmp_path / "run")
    monkeypatch.setattr(stage, "SANE", IdentitySANE())
    report = stage.sample_from_run(tmp_path / "run", tmp_path / "out", prompts=3,
                                   prompts_from=wide_zoo.path,
                                   config=SamplingConfig(samples=4, keep=2, bandwidth=0.0))
    [group] = report.architectures
    assert group.architecture["name"] == "cnn_s_wide"
    assert not zoo_prompts(wide_zoo.path, trained_store.tokenizer, 1).fresh  # 10 classes too
    for prompt in report.prompts:
        recorded = {r["epoch"]: r for r in wide_zoo.metrics(prompt.model)}[2]
        assert prompt.epoch == 2 and prompt.selection == pytest.approx(recorded["val_acc"],
                                                                       abs=0.01)
        assert prompt.report == pytest.approx(recorded["test_acc"], abs=0.01)
    for sample in report.samples:
        prompt = next(p for p in report.prompts if p.model == sample.nearest_prompt)
        assert sample.report == pytest.approx(prompt.report, abs=1e-9)
        net = build_model(ArchConfig(name="cnn_s_wide"))
        net.load_state_dict(load_file(str(tmp_path / "out" / sample.file)))


@pytest.mark.slow
def test_sane_sample_prompts_from_a_wider_zoo_and_finetune(trained_store, wide_zoo, tmp_path,
                                                           capsys):
    run = tmp_path / "run"
    pretrain(trained_store.path, run, PretrainConfig(preset="tiny", epochs=1, batch_size=8,
                                                     model={"d_model": 32, "n_layers": 1}),
             progress=False)
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--prompts-from", str(wide_zoo.path), "--prompts", "2",
                 "--samples", "3", "--keep", "2", "--out", str(out)]) == 0
    report = json.loads((out / "samples.json").read_text())
    assert report["request"]["prompts_from"] == str(wide_zoo.path.resolve())
    assert [p["model"] for p in report["prompts"]] == ["m0000", "m0001"]
    for sample in report["samples"]:
        net = build_model(ArchConfig.from_dict(report["architectures"][0]["architecture"]))
        net.load_state_dict(load_file(str(out / sample["file"])))
        assert net.module_list[0].weight.shape == (16, 1, 5, 5)
    assert main(["finetune", str(out), "--epochs", "1"]) == 0
    tuned = json.loads((out / "finetune.json").read_text())["splits"]["test"]
    assert {k: len(v) for k, v in tuned.items()} == {"sampled": 2, "random init": 2,
                                                     "prompts": 2}
    capsys.readouterr()
    assert main(["sample", str(run), "--prompts-from", str(wide_zoo.path), "--store",
                 str(trained_store.path), "--out", str(tmp_path / "x")]) == 2
    assert "without --store, --dataset or --prompt-split" in capsys.readouterr().err
    zoo = Zoo.open(wide_zoo.path)
    assert len(zoo.models) == 3


def _zoo(tmp_path_factory, name: str, models: int, epochs: int) -> Zoo:
    toml = tmp_path_factory.mktemp("config") / f"{name}.toml"
    toml.write_text(f'preset = "digits-cnn-s-seed"\nmodels = {models}\nepochs = {epochs}\n'
                    f'[architecture]\nname = "{name}"\n')
    return train_population(load_config(toml), tmp_path_factory.mktemp(name), progress=False)


@pytest.mark.slow
def test_batch_norm_resnets_pretrain_sample_and_transfer_to_a_deeper_resnet(tmp_path_factory,
                                                                            monkeypatch):
    """A 2-block ResNet zoo through the whole path: batch-norm statistics are left out of the
    tokens, and every sampled model has them re-estimated on the task's training images."""
    from sane.stages import sample as stage
    from sane.weights.store import StoreSettings, prepare_store

    tmp = tmp_path_factory.mktemp("resnet")
    zoo = _zoo(tmp_path_factory, "resnet_s", models=6, epochs=2)
    store = prepare_store(zoo.path, tmp / "store", StoreSettings(align=True), progress=False)
    assert not store.manifest.include_batchnorm
    assert any("running_mean" in e.key for e in store.manifest.excluded)
    pretrain(store.path, tmp / "run", PretrainConfig(preset="tiny", epochs=1, batch_size=4,
                                                     model={"d_model": 32, "n_layers": 1}),
             progress=False)
    report = stage.sample_from_run(tmp / "run", tmp / "samples", prompts=3,
                                   config=SamplingConfig(samples=3, keep=2))
    for sample in report.samples:
        state = load_file(str(tmp / "samples" / sample.file))
        assert int(state["bn1.num_batches_tracked"]) == 10  # conditioned on 10 batches
        assert not torch.equal(state["bn1.running_var"], torch.ones(8))
        build_model(ArchConfig(name="resnet_s")).load_state_dict(state)
    # An exact autoencoder gives back the deeper prompts' weights (aligned), their batch-norm
    # statistics re-estimated like every sample's.
    deep = _zoo(tmp_path_factory, "resnet_s_deep", models=2, epochs=2)
    monkeypatch.setattr(stage, "SANE", IdentitySANE(store.manifest.token_size))
    exact = stage.sample_from_run(tmp / "run", tmp / "deep", prompts=2, prompts_from=deep.path,
                                  config=SamplingConfig(samples=2, keep=2, bandwidth=0.0))
    assert {g.architecture["name"] for g in exact.architectures} == {"resnet_s_deep"}
    prompts = zoo_prompts(deep.path, Tokenizer.from_pretrained(tmp / "run"), 2)
    for sample in exact.samples:
        prompt = next(p for p in exact.prompts if p.model == sample.nearest_prompt)
        state = load_file(str(tmp / "deep" / sample.file))
        build_model(ArchConfig(name="resnet_s_deep")).load_state_dict(state)
        source = prompts.states[[m for m, _ in prompts.ids].index(prompt.model)]
        for key in prompts.tokenizer.manifest.tokenized_keys():
            torch.testing.assert_close(state[key], source[key], rtol=1e-5, atol=1e-6)
        assert int(state["layer2.1.bn2.num_batches_tracked"]) == 10


def test_a_classifier_for_another_class_count_is_reinitialized(trained_store, monkeypatch,
                                                                tmp_path):
    """Prompts of a 12-class CNN-s (untrained here): sampled models keep every decoded weight
    but the classifier, which is the freshly built model's; the prompts keep theirs."""
    from sane.stages import sample as stage

    arch = ArchConfig(name="cnn_s", num_classes=12, activation="relu")
    zoo = Zoo.create(tmp_path / "zoo12", [ModelEntry(f"m{i}", i, arch) for i in range(3)],
                     dataset={"name": "digits", "size": 28}, split={"train": ["m0", "m1", "m2"],
                                                                   "val": [], "test": []})
    for i in range(3):
        zoo.write_epoch(f"m{i}", 0, build_model(arch, seed=10 + i).state_dict(),
                        {"val_acc": 0.1, "test_acc": 0.1})
    prompts = zoo_prompts(zoo.path, trained_store.tokenizer, 2)
    keys = prompts.tokenizer.manifest.keys
    head = list(build_model(arch).state_dict())[-2:]  # the last linear layer
    assert [keys[i] for i in prompts.fresh] == head
    trained_store.tokenizer.save_pretrained(tmp_path / "run")
    monkeypatch.setattr(stage, "SANE", IdentitySANE())
    report = stage.sample_from_run(tmp_path / "run", tmp_path / "out", prompts=2,
                                   prompts_from=zoo.path,
                                   config=SamplingConfig(samples=2, keep=2, bandwidth=0.0))
    fresh = build_model(arch, seed=0).state_dict()
    for sample in report.samples:
        state = load_file(str(tmp_path / "out" / sample.file))
        source = prompts.states[[m for m, _ in prompts.ids].index(sample.nearest_prompt)]
        assert all(torch.equal(state[k], fresh[k]) for k in head)
        torch.testing.assert_close(state["module_list.0.weight"], source["module_list.0.weight"])
