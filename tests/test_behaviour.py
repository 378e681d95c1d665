"""The behavioural loss of pretraining: decoded models judged by their outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from sane.errors import ConfigError
from sane.train import PretrainConfig, pretrain
from sane.train.behaviour import BehaviourLoss
from sane.zoo import build_model
from sane.zoo.layout import as_architecture


class ShiftedDecoder(nn.Module):
    """Stands in for SANE: latents are the tokens, decoded with a learnable shift."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(()))

    def encode_sequence(self, tokens, positions):
        return tokens.clone()

    def decode_sequence(self, z, positions):
        return z + self.shift


def test_the_loss_reads_each_checkpoint_as_its_own_network(trained_store):
    loss = BehaviourLoss(trained_store, models=2, images=8)
    images = loss.data[:8]
    for row in (0, len(trained_store.rows) - 1):  # a tanh and a relu model
        arch = trained_store.architecture(row)
        net = build_model(arch)
        net.load_state_dict(as_architecture(arch, trained_store.state_dict(row)))
        tokens = torch.tensor(trained_store.tokens[row], dtype=torch.float32)
        own = loss.nets[trained_store.row_architecture[row]]
        torch.testing.assert_close(loss.outputs(own, tokens, images), net.eval()(images),
                                   rtol=1e-4, atol=1e-4)
    assert {a.activation for a in trained_store.architectures} == {"tanh", "relu"}


def test_exact_decoding_costs_nothing_and_a_wrong_one_has_a_gradient(trained_store):
    loss = BehaviourLoss(trained_store, models=3, images=16)
    model = ShiftedDecoder()
    exact = loss(model, torch.Generator().manual_seed(0))
    assert exact.item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.shift.fill_(0.5)
    shifted = loss(model, torch.Generator().manual_seed(0))
    assert shifted.item() > 1e-3
    shifted.backward()
    assert model.shift.grad is not None and float(model.shift.grad) != 0.0


def test_bad_settings_are_refused(trained_store):
    with pytest.raises(ConfigError, match="models >= 1 and images >= 1"):
        BehaviourLoss(trained_store, models=0, images=8)
    with pytest.raises(ConfigError, match="behaviour must be non-negative"):
        PretrainConfig(behaviour=-1.0)


def test_pretraining_with_the_behavioural_loss_records_it_and_clips(trained_store, tmp_path,
                                                                   monkeypatch):
    clip = torch.nn.utils.clip_grad_norm_
    norms = []

    def recording(parameters, max_norm):
        norms.append(max_norm)
        return clip(parameters, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    config = PretrainConfig(preset="tiny", epochs=1, batch_size=8, behaviour=0.5,
                            behaviour_models=2, behaviour_images=8, fidelity_models=2,
                            model={"d_model": 32, "n_layers": 1})
    history = pretrain(trained_store.path, tmp_path / "run", config, progress=False).history
    record = history[-1]
    assert record["train_behaviour"] > 0
    assert "val_behaviour" not in record  # validation windows measure reconstruction only
    assert norms and set(norms) == {1.0}  # every step's gradient clipped to norm 1
    norms.clear()
    plain = dataclasses.replace(config, behaviour=0.0)
    pretrain(trained_store.path, tmp_path / "plain", plain, progress=False)
    assert norms == []  # without the behavioural loss nothing is clipped
