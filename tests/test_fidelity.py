"""Reconstruction judged by function: whole-model and per-layer R², decoded accuracy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sane.stages.prompts import target_data
from sane.train.fidelity import fidelity_markdown, fidelity_rows, split_fidelity
from sane.zoo import Zoo
from sane.zoo.evaluation import accuracy


class NoisyIdentity(nn.Module):
    """Latents are the tokens; decoding adds Gaussian noise of standard deviation ``std``."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std
        self.anchor = nn.Parameter(torch.zeros(1))

    def encode_sequence(self, tokens, positions):
        return tokens

    def decode_sequence(self, z, positions):
        return z + self.std * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))


def test_store_rows_know_their_architecture_and_score_as_in_training(trained_store):
    zoo = Zoo.open(trained_store.zoo_path)
    data = target_data(trained_store)
    assert {a.activation for a in trained_store.architectures} == {"tanh", "relu"}
    for row in fidelity_rows(trained_store, "val", 10) + fidelity_rows(trained_store, "train", 10):
        model_id, epoch, _ = trained_store.rows[row]
        assert trained_store.architecture(row) == zoo.model(model_id).architecture
        recorded = {r["epoch"]: r for r in zoo.metrics(model_id)}[epoch]
        net = trained_store.model(row)
        assert accuracy(net, data.val.x, data.val.y) == pytest.approx(recorded["val_acc"],
                                                                      abs=0.01)


def test_an_exact_autoencoder_keeps_everything_and_noise_costs_accuracy(trained_store):
    data = target_data(trained_store)
    rows = fidelity_rows(trained_store, "train", 3)
    assert [trained_store.rows[r][1] for r in rows] == [3, 3, 3]  # each model's last epoch
    exact = split_fidelity(NoisyIdentity(0.0), trained_store, rows, data)
    assert exact.models == 3 and exact.r2 == 1.0 and exact.layer_r2 == [1.0] * 5
    assert exact.decoded_accuracy == exact.accuracy and exact.ratio == 1.0
    assert exact.accuracy > 0.3
    noisy = split_fidelity(NoisyIdentity(1.0), trained_store, rows, data)
    assert noisy.r2 == pytest.approx(0.0, abs=0.1)  # noise as large as the standardized values
    assert noisy.ratio < 0.8 and noisy.accuracy == exact.accuracy
    table = fidelity_markdown({"train": exact.to_dict(), "val": noisy.to_dict()})
    assert "| train | 3 | 1.0000 |" in table and "| layer 0 |" in table
    no_data = split_fidelity(NoisyIdentity(0.0), trained_store, rows)
    assert no_data.accuracy is None and no_data.ratio is None
