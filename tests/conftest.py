"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from sane.model import SANE
from sane.stages.reference import fit_reference
from sane.train import PretrainConfig, pretrain
from sane.weights.store import StoreSettings, TokenStore, prepare_store
from sane.zoo import ArchConfig, ModelEntry, Zoo, build_model


@pytest.fixture(scope="session")
def random_store(tmp_path_factory) -> TokenStore:
    """An aligned token store of 12 random (untrained) CNN-s × 3 epochs, 48 tokens of 201
    per checkpoint, with made-up metrics that depend on the model and the epoch."""
    arch = ArchConfig(name="cnn_s")
    zoo = Zoo.create(tmp_path_factory.mktemp("zoo"),
                     [ModelEntry(f"m{i:03d}", i, arch) for i in range(12)],
                     dataset={"name": "digits", "size": 28})
    for i, entry in enumerate(zoo.models):
        for e in range(3):
            zoo.write_epoch(entry.id, e, build_model(arch, seed=100 * i + e).state_dict(),
                            {"test_acc": 0.1 * e + 0.01 * i, "val_acc": 0.1 * e + 0.02 * i,
                             "train_acc": 0.2 * e})
    return prepare_store(zoo.path, tmp_path_factory.mktemp("store"), StoreSettings(align=True),
                         progress=False)


@pytest.fixture(scope="session")
def tiny_run(random_store, tmp_path_factory) -> tuple[Path, SANE]:
    """A one-epoch pretraining run of a very small SANE on :func:`random_store`."""
    out = tmp_path_factory.mktemp("run")
    config = PretrainConfig(preset="tiny", epochs=1, batch_size=8,
                            model={"d_model": 32, "n_layers": 1})
    model = pretrain(random_store.path, out, config, progress=False).model
    fit_reference(out, store=random_store.path)  # as `sane pretrain` does
    return out, model


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory) -> TokenStore:
    """An aligned token store of the ``digits-cnn-s`` zoo trained for 3 epochs: 8 CNN-s, tanh
    and relu (a mixed-activation zoo), trained well above chance."""
    from sane.zoo import load_config, train_population

    zoo = train_population(load_config("digits-cnn-s", epochs=3),
                           tmp_path_factory.mktemp("digits-zoo"), progress=False)
    return prepare_store(zoo.path, tmp_path_factory.mktemp("digits-store"),
                         StoreSettings(align=True), progress=False)
