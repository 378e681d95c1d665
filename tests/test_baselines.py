"""Baselines W and s(W): hand-computed values, token order, no padding, batch-norm switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sane.errors import FormatError
from sane.weights import (
    BASELINES,
    sw_layer,
    sw_tensor_std,
    sw_tensor_var,
    tokenize,
    w_features,
)
from sane.zoo.architectures import ArchConfig, build_model


def tiny() -> dict[str, torch.Tensor]:
    """Linear(2, 2) with bias, then Linear(2, 1) without."""
    return {
        "0.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "0.bias": torch.tensor([10.0, 20.0]),
        "1.weight": torch.tensor([[5.0, 7.0]]),
    }


def test_hand_computed_values():
    sd = tiny()
    # Per tensor: 0.weight {1,2,3,4}, 0.bias {10,20}, 1.weight {5,7}.
    var = [2.5, 1.25, 1, 1.75, 2.5, 3.25, 4,
           15, 25, 10, 12.5, 15, 17.5, 20,
           6, 1, 5, 5.5, 6, 6.5, 7]
    np.testing.assert_allclose(sw_tensor_var([sd]), [var], rtol=1e-12)
    std = list(var)
    std[1], std[8], std[15] = 1.25**0.5, 5.0, 1.0
    np.testing.assert_allclose(sw_tensor_std([sd]), [std], rtol=1e-12)
    # Per layer: layer 0 is the rows [1, 2, 10] and [3, 4, 20]; sorted 1,2,3,4,10,20.
    layer = [40 / 6, 530 / 6 - (40 / 6) ** 2, 1.05, 2.25, 3.5, 8.5, 19.5,
             6, 1, 5.02, 5.5, 6, 6.5, 6.98]
    np.testing.assert_allclose(sw_layer([sd]), [layer], rtol=1e-12)
    np.testing.assert_array_equal(w_features([sd]), [[1, 2, 10, 3, 4, 20, 5, 7]])


def test_padding_never_enters():
    # With a token size of 3, layer 1's row [5, 7] is padded with a zero; all real values are
    # positive, so a padding zero would move the minimum, the mean and the low percentiles.
    sd = tiny()
    tokens = tokenize(sd, token_size=3)
    assert not tokens.mask.all()
    padded_layer_1 = tokens.tokens[tokens.positions[:, 1] == 1].flatten().double()
    assert padded_layer_1.min() == 0  # what the reference's s(W) would have used
    features = sw_layer([sd])
    assert features[0, 7] == 6 and features[0, 9] == pytest.approx(5.02)
    assert sw_tensor_var([sd])[0, 2::7].min() == 1  # quantile 0 of each tensor: its minimum
    assert w_features([sd]).shape == (1, 8)


def test_w_is_the_masked_token_sequence():
    models = [build_model(ArchConfig(name="cnn_s"), seed=s).state_dict() for s in range(3)]
    features = w_features(models)
    assert features.dtype == np.float64 and features.shape == (3, 2464)
    for row, sd in zip(features, models):
        tokens = tokenize(sd)
        np.testing.assert_array_equal(row, tokens.tokens[tokens.mask].double().numpy())


def test_vectorized_over_models_matches_one_at_a_time():
    models = [build_model(ArchConfig(name="cnn_s"), seed=s).state_dict() for s in range(4)]
    for name, baseline in BASELINES.items():
        together = baseline(models)
        one_by_one = np.concatenate([baseline([sd]) for sd in models])
        assert together.dtype == np.float64, name
        np.testing.assert_array_equal(together, one_by_one, err_msg=name)


def test_std_variant_differs_only_in_the_spread():
    models = [build_model(ArchConfig(name="cnn_s"), seed=s).state_dict() for s in range(2)]
    var, std = sw_tensor_var(models), sw_tensor_std(models)
    assert var.shape == std.shape == (2, 7 * 10)  # 5 layers, weight and bias each
    np.testing.assert_allclose(std[:, 1::7], np.sqrt(var[:, 1::7]), rtol=1e-12)
    keep = np.ones(var.shape[1], dtype=bool)
    keep[1::7] = False
    np.testing.assert_array_equal(std[:, keep], var[:, keep])


def test_batchnorm_switch():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    sd = model.state_dict()
    with torch.no_grad():
        sd["1.running_var"].uniform_(1, 2, generator=torch.Generator().manual_seed(0))
    assert sw_layer([sd]).shape == (1, 7)
    assert sw_tensor_var([sd]).shape == (1, 14)
    assert w_features([sd]).shape == (1, 9)
    # Included: [γ, β], running mean and running variance are three more layers.
    included = sw_layer([sd], model=model, include_batchnorm=True)
    assert included.shape == (1, 28)
    assert included[0, 21] == pytest.approx(sd["1.running_var"].double().mean().item())
    assert sw_tensor_var([sd], include_batchnorm=True).shape == (1, 42)
    assert w_features([sd], include_batchnorm=True).shape == (1, 9 + 12)


def test_bad_input():
    with pytest.raises(FormatError, match="at least one"):
        w_features([])
    other = {**tiny(), "1.weight": torch.ones(1, 3)}
    with pytest.raises(FormatError, match=r"state dict 1: .*'1.weight'.*shape"):
        sw_layer([tiny(), other])
    with pytest.raises(FormatError, match=r"state dict 0: .*'0.bias'.*non-finite"):
        sw_tensor_std([{**tiny(), "0.bias": torch.tensor([1.0, float("inf")])}])
