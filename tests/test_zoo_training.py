"""Training a population into a zoo: what every epoch records, and accuracy against plain
torch training."""

import json
from pathlib import Path

import pytest
import torch

from sane.data import load_dataset
from sane.zoo.architectures import build_model
from sane.zoo.config import DataConfig, PopulationConfig, SearchSpace
from sane.zoo.generate import train_population
from sane.zoo.population import StackedNet, evaluate, model_layout
from sane.zoo.storage import METRIC_KEYS
from zoo_helpers import plain_epoch, plain_optimizer, tiny_config

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def test_zoo_records_every_epoch_and_its_config(tmp_path):
    config = tiny_config(tmp_path)
    zoo = train_population(config, tmp_path / "zoo", progress=False)
    assert len(zoo.models) == 6
    assert zoo.manifest["population"] == json.loads(json.dumps(config.to_dict()))
    assert zoo.dataset["examples"]["train"] == 200 and zoo.dataset["name"] == "digits"
    assert {k: len(v) for k, v in zoo.split.items()} == {"train": 4, "val": 1, "test": 1}
    for entry in zoo.models:
        rows = zoo.metrics(entry.id)
        assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
        for row in rows:
            assert set(row) == {"epoch", "checkpoint", "ggap", *METRIC_KEYS}
            assert row["checkpoint"] is True
            assert row["ggap"] == pytest.approx(row["train_acc"] - row["test_acc"])
            assert all(0 <= row[k] <= 1 for k in ("train_acc", "val_acc", "test_acc"))
        state = zoo.load_checkpoint(entry.id, 3)
        own = build_model(entry.architecture).state_dict()  # with or without dropout modules
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in own.items()}
        assert not list(zoo.model_dir(entry.id).glob("resume_*"))  # removed when finished
    # Epoch 0 is the initialization, evaluated.
    first = zoo.models[0]
    init = build_model(first.architecture, first.seed).state_dict()
    assert all(torch.equal(zoo.load_checkpoint(first.id, 0)[k], v) for k, v in init.items())


def test_epoch_zero_and_eval_train_metrics_are_evaluation_passes(tmp_path):
    config = tiny_config(tmp_path, train_metrics="eval", epochs=1)
    zoo = train_population(config, tmp_path / "zoo", progress=False)
    ds = load_dataset("digits", size=28)
    train = (model_layout(ds.train.x[:200]), ds.train.y[:200])
    for entry in zoo.models[:2]:
        for epoch in (0, 1):
            net = StackedNet([build_model(entry.architecture)])
            net.load_state_dicts([zoo.load_checkpoint(entry.id, epoch)])
            loss, acc = evaluate(net, *train)
            row = zoo.metrics(entry.id)[epoch]
            assert row["train_loss"] == pytest.approx(float(loss[0]), rel=1e-5)
            assert row["train_acc"] == pytest.approx(float(acc[0]))


@pytest.mark.slow
def test_population_and_alone_reach_the_same_accuracy_on_fashion_mnist(tmp_path):
    assert FASHION_MNIST.is_dir(), "install the Debian package dataset-fashion-mnist"
    space = SearchSpace(seed_range=(1, 1), init=("kaiming_uniform",), optimizer=("adam", "sgd"),
                        lr=(3e-3,), weight_decay=(1e-4,), batch_size=(20,))
    data = DataConfig(name="fashion-mnist", train_size=2000, val_fraction=0.02)
    config = PopulationConfig(dataset=data, space=space, epochs=2, threads=1)
    zoo = train_population(config, tmp_path / "zoo", progress=False)

    ds = load_dataset("fashion-mnist", val_fraction=0.02)
    x, y = ds.train.x[:2000], ds.train.y[:2000]
    before = torch.get_num_threads()  # restored below: a test leaves the process as it was
    torch.set_num_threads(1)
    try:
        alone_accuracies = [_train_alone(entry, x, y, ds) for entry in zoo.models]
    finally:
        torch.set_num_threads(before)
    for entry, alone in zip(zoo.models, alone_accuracies):
        together = zoo.metrics(entry.id)[-1]["test_acc"]
        print(entry.id, entry.training["optimizer"], f"together {together:.4f} alone {alone:.4f}")
        assert together > 0.5  # the models learned something, so the comparison means it
        assert abs(together - alone) <= 0.01


def _train_alone(entry, x, y, ds) -> float:
    """Test accuracy of ``entry`` trained for 2 epochs by an independent plain loop
    (nn.Module and torch.optim)."""
    model = build_model(entry.architecture, entry.seed)
    t = entry.training
    optimizer = plain_optimizer(model, t)
    for epoch in (1, 2):
        plain_epoch(model, optimizer, x, y, entry.seed, epoch, t["batch_size"])
    model.eval()
    with torch.no_grad():
        return (model(ds.test.x).argmax(1) == ds.test.y).double().mean().item()
