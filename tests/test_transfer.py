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
from sane.train import PretrainConfig, pretrain
from sane.weights import make_manifest
from sane.weights.positions import relative_positions
from sane.zoo import ArchConfig, Zoo, build_model, load_config, train_population


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
    toml = tmp_path_factory.mktemp("config") / "wide.toml"
    toml.write_text('preset = "digits-cnn-s-seed"\nmodels = 3\nepochs = 2\n'
                    '[architecture]\nname = "cnn_s_wide"\n')
    return train_population(load_config(toml), tmp_path_factory.mktemp("wide"), progress=False)


@pytest.mark.slow
def test_an_exact_autoencoder_samples_the_target_prompts_themselves(trained_store, wide_zoo,
                                                                    monkeypatch, tmp_path):
    """Through the whole target path (tokenizer fitted on the prompt zoo, relative positions,
    decoding into the wider architecture), no noise and an identity autoencoder give back
    the prompts, which score what they scored in training."""
    from sane.stages import sample as stage

    trained_store.tokenizer.save_pretrained(tmp_path / "run")
    monkeypatch.setattr(stage, "SANE", IdentitySANE)
    report = stage.sample_from_run(tmp_path / "run", tmp_path / "out", prompts=3,
                                   prompts_from=wide_zoo.path,
                                   config=SamplingConfig(samples=4, keep=2, bandwidth=0.0))
    [group] = report.architectures
    assert group["architecture"]["name"] == "cnn_s_wide"
    for prompt in report.prompts:
        recorded = {r["epoch"]: r for r in wide_zoo.metrics(prompt["model"])}[2]["val_acc"]
        assert prompt["epoch"] == 2 and prompt["score"] == pytest.approx(recorded, abs=0.01)
    for sample in report.samples:
        prompt = next(p for p in report.prompts if p["model"] == sample["nearest_prompt"])
        assert sample["score"] == pytest.approx(prompt["score"], abs=1e-9)
        net = build_model(ArchConfig(name="cnn_s_wide"))
        net.load_state_dict(load_file(str(tmp_path / "out" / sample["file"])))


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
    tuned = json.loads((out / "finetune.json").read_text())["accuracy"]
    assert {k: len(v) for k, v in tuned.items()} == {"sampled": 2, "random init": 2,
                                                     "prompts": 2}
    capsys.readouterr()
    assert main(["sample", str(run), "--prompts-from", str(wide_zoo.path), "--store",
                 str(trained_store.path), "--out", str(tmp_path / "x")]) == 2
    assert "without --store or --dataset" in capsys.readouterr().err
    zoo = Zoo.open(wide_zoo.path)
    assert len(zoo.models) == 3
