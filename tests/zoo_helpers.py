"""Helpers shared by the zoo training tests: a tiny population, its checkpoints, a crash, and
the plain torch loop the population engine is checked against."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sane.zoo.config import PopulationConfig, load_config
from sane.zoo.generate import train_population
from sane.zoo.population import data_order
from sane.zoo.storage import Zoo

# Four digit models in two groups (tanh, relu), Adam and SGD mixed inside each group, dropout
# in some: small enough for seconds, varied enough to cross every code path.
TINY_TOML = """
epochs = 3
workers = 1
threads = 1

[dataset]
name = "digits"
train_size = 200

[space]
seed_range = [1, 2]
activation = ["tanh", "relu"]
init = ["kaiming_uniform"]
optimizer = ["adam", "sgd"]
dropout = [0.0, 0.3]
lr = [0.01]
batch_size = [16]
"""


def tiny_config(tmp_path: Path, **overrides) -> PopulationConfig:
    file = tmp_path / "tiny.toml"
    file.write_text(TINY_TOML)
    # 2 seeds x 2 activations x 2 optimizers x 2 dropouts = 16 recipes; keep a random 6.
    return load_config(file, mode="random", models=6, **overrides)


def checkpoints(zoo_dir: Path) -> dict[str, bytes]:
    models = zoo_dir / "models"
    return {str(f.relative_to(models)): f.read_bytes()
            for f in sorted(models.rglob("epoch_*.safetensors"))}


def crash_training(config: PopulationConfig, out: Path, monkeypatch, after: int) -> None:
    """Train ``config`` into ``out`` and crash inside the ``after``-th ``Zoo.write_epoch``
    call (after the resume state, before the checkpoint), as a killed run would."""
    original = Zoo.write_epoch
    calls = []

    def crashing(self, *args, **kwargs):
        calls.append(args[:2])
        if len(calls) == after:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Zoo, "write_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_population(config, out, progress=False)
    monkeypatch.setattr(Zoo, "write_epoch", original)


def plain_optimizer(model: torch.nn.Module, training: dict) -> torch.optim.Optimizer:
    """The optimizer of a model's recipe (``ModelEntry.training``), built with plain
    ``torch.optim``: the reference the population engine is checked against."""
    if training["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=training["lr"],
                                weight_decay=training["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=training["lr"],
                           momentum=training["momentum"], weight_decay=training["weight_decay"])


def plain_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, seed: int, epoch: int, batch_size: int) -> float:
    """One epoch of the plain reference loop (``nn.Module`` and ``torch.optim``) over
    ``x``, ``y`` in the engine's data order for the model's ``seed``; the mean training loss."""
    order, loss_sum = data_order(seed, epoch, len(y)), 0.0
    for i in range(0, len(y), batch_size):
        index = order[i:i + batch_size]
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(index)
    return loss_sum / len(y)
