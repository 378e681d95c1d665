"""Fine-tuning evaluation of sampled models (`sane finetune`)."""

from __future__ import annotations

import json

import pytest

from sane.cli import main
from sane.data import load_dataset
from sane.downstream.sampling import SamplingConfig
from sane.errors import ConfigError, FormatError
from sane.stages.finetune import finetune_samples, train_and_track
from sane.stages.sample import SampleResult, sample_from_run
from sane.zoo import ArchConfig, build_model

# Every test fine-tunes models for seconds, or reuses what a test before it fine-tuned.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def samples(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    sample_from_run(tiny_run[0], out, prompts=2, config=SamplingConfig(samples=4, keep=2))
    return out


def test_every_group_trains_the_same_way_from_its_own_start(samples):
    result = finetune_samples(samples, epochs=2, lr=3e-3)
    groups = result.accuracy
    assert result.report_split == "test" and set(result.splits) == {"val", "test"}
    assert {name: len(runs) for name, runs in groups.items()} == {
        "sampled": 2, "random init": 2, "prompts": 2}
    assert all(len(run) == 3 for runs in groups.values() for run in runs)  # epochs 0, 1, 2
    recorded = SampleResult.load(samples)
    # Epoch 0 is the model as sampled (CNN-s has no batch norm to re-estimate), on each split.
    assert [run[0] for run in groups["sampled"]] == [s.report for s in recorded.samples]
    assert [run[0] for run in result.splits["val"]["sampled"]] == [
        s.selection for s in recorded.samples]
    assert [run[0] for run in groups["prompts"]] == [p.report for p in recorded.prompts]
    table = (samples / "finetune.md").read_text()
    assert "# Fine-tuning: test accuracy" in table
    assert "| group (models) | epoch 0 | epoch 1 | epoch 2 |" in table
    assert "| sampled (2) |" in table and "| random init (2) |" in table


def test_training_improves_a_trainable_model():
    ds = load_dataset("digits", size=28)
    net = build_model(ArchConfig(name="cnn_s", init="kaiming_uniform", activation="relu"), seed=0)
    history = train_and_track(net, (ds.train.x, ds.train.y),
                              {"val": (ds.val.x, ds.val.y), "test": (ds.test.x, ds.test.y)},
                              epochs=2, lr=3e-3, batch_size=32, seed=0)
    assert set(history) == {"val", "test"}
    assert len(history["test"]) == 3 and history["test"][2] > history["test"][0] + 0.4


def test_finetune_errors(samples, tmp_path, capsys):
    with pytest.raises(FormatError, match=r"samples\.json not found"):
        finetune_samples(tmp_path)
    with pytest.raises(ConfigError, match="epochs >= 1"):
        finetune_samples(samples, epochs=0)
    assert main(["finetune", str(samples), "--epochs", "1"]) == 0
    assert "| epoch 0 | epoch 1 |" in capsys.readouterr().out


def test_the_same_request_twice_computes_nothing_again(tiny_run, samples):
    stamps = {f: f.stat().st_mtime_ns for f in samples.iterdir()}
    again = sample_from_run(tiny_run[0], samples, prompts=2,
                            config=SamplingConfig(samples=4, keep=2))
    assert again.to_dict() == json.loads((samples / "samples.json").read_text())
    assert again.kept_mean == sum(s.report for s in again.samples) / 2
    first = finetune_samples(samples, epochs=1)
    assert finetune_samples(samples, epochs=1) == first
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items() if f.suffix != ".json"
               and not f.name.startswith("finetune"))
    assert (samples / "samples.json").stat().st_mtime_ns == stamps[samples / "samples.json"]
    other = sample_from_run(tiny_run[0], samples, prompts=2,
                            config=SamplingConfig(samples=4, keep=1))
    assert len(other.samples) == 1 and len(list(samples.glob("sample_*"))) == 1
    assert finetune_samples(samples, epochs=1) != first  # other samples, fine-tuned anew
