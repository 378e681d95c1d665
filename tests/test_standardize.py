"""Per-tensor standardization: pooled statistics, train-split fitting, batch norm standardized
once, exact inverse, JSON round trip and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sane.errors import FormatError
from sane.weights import Standardization, fit_standardization, make_manifest


def zoo(n: int, seed: int, shift: float = 0.0) -> list[dict[str, torch.Tensor]]:
    """``n`` state dicts of a conv + batch-norm + linear net; model ``i``'s weights are
    shifted by ``shift · i`` so that per-model means differ."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 4))
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        sd = {}
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t = torch.randn(t.shape, generator=g) * (1 + i) + shift * i
                if key.endswith("running_var"):
                    t = t.abs() + 0.1
            sd[key] = t
        out.append(sd)
    return out


def standardized(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return ((x.double() - mean) / std).to(x.dtype)


def test_statistics_are_pooled_over_all_elements():
    train = zoo(4, seed=0, shift=3.0)
    s = fit_standardization(train)
    for key, stats in s.stats.items():
        values = np.concatenate([sd[key].double().numpy().ravel() for sd in train])
        assert stats.count == values.size
        assert stats.mean == pytest.approx(values.mean(), rel=1e-12, abs=1e-12)
        assert stats.std == pytest.approx(values.std(), rel=1e-12)
    # Pooling per-model standard deviations (the reference's sqrt(mean(std²))) ignores the
    # spread of the per-model means and would give a clearly smaller value here.
    key = "3.weight"
    per_model = np.sqrt(np.mean([sd[key].double().var().item() for sd in train]))
    assert s.stats[key].std > 1.2 * per_model


def test_weight_and_bias_and_each_batchnorm_tensor_have_their_own_statistics():
    s = fit_standardization(zoo(3, seed=1))
    expected = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                "3.weight", "3.bias"]
    assert list(s.stats) == expected  # num_batches_tracked is an integer: left alone
    assert len({s.stats[k].mean for k in expected}) == len(expected)


def test_batchnorm_running_statistics_are_standardized_once():
    train = zoo(3, seed=2)
    s = fit_standardization(train)
    out = s.apply(train[0])
    for key in ("1.running_mean", "1.running_var", "1.weight", "1.bias"):
        mean, std = s.stats[key].mean, s.stats[key].std
        once = standardized(train[0][key], mean, std)
        twice = standardized(once, mean, std)
        assert torch.equal(out[key], once), key
        assert not torch.allclose(out[key], twice), key
    assert torch.equal(out["1.num_batches_tracked"], train[0]["1.num_batches_tracked"])


def test_fitted_on_train_and_applied_unchanged_to_other_splits():
    train, val = zoo(4, seed=3, shift=1.0), zoo(2, seed=4, shift=5.0)
    s = fit_standardization(train)
    before = s.to_dict()
    for sd in val:
        out = s.apply(sd)
        for key, stats in s.stats.items():
            assert torch.equal(out[key], standardized(sd[key], stats.mean, stats.std))
    assert s.to_dict() == before
    # Statistics of the validation split itself differ, so the check above can tell them apart.
    own = fit_standardization(val)
    assert all(abs(own.stats[k].mean - s.stats[k].mean) > 1e-3 for k in s.stats)


def test_inverse_float32():
    train = zoo(3, seed=5, shift=2.0)
    s = fit_standardization(train)
    back = s.invert(s.apply(train[1]))
    assert list(back) == list(train[1])
    for key in s.stats:
        assert back[key].dtype == torch.float32
        x = train[1][key]
        assert ((back[key] - x).abs() <= 1e-6 * (1 + x.abs())).all(), key


def test_inverse_float64_to_1e_12_relative():
    train = [{k: v.double() for k, v in sd.items()} for sd in zoo(3, seed=6, shift=2.0)]
    s = fit_standardization(train)
    back = s.invert(s.apply(train[2]))
    for key in s.stats:
        assert back[key].dtype == torch.float64
        x = train[2][key]
        assert ((back[key] - x).abs() <= 1e-12 * x.abs().clamp_min(1e-3)).all(), key


def test_half_precision_keeps_its_dtype():
    train = [{k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
             for sd in zoo(2, seed=7)]
    out = fit_standardization(train).apply(train[0])
    assert all(out[k].dtype == torch.float16 for k in ("0.weight", "1.running_var"))


def test_constant_tensor_gets_std_one():
    sds = [{"w": torch.full((3, 2), 0.01), "b": torch.randn(3)} for _ in range(3)]
    s = fit_standardization(sds)
    assert (s.stats["w"].mean, s.stats["w"].std) == (pytest.approx(0.01, rel=1e-7), 1.0)
    out = s.apply(sds[0])
    assert torch.equal(out["w"], torch.zeros(3, 2))
    assert torch.equal(s.invert(out)["w"], sds[0]["w"])


def test_streams_over_a_generator_once():
    train = zoo(3, seed=8)
    from_list = fit_standardization(train)
    from_generator = fit_standardization(sd for sd in train)
    assert from_generator == from_list


def test_only_tokenized_keys_when_asked():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3, 4))
    train = zoo(2, seed=9)
    keys = make_manifest(train[0], model=model).tokenized_keys()
    s = fit_standardization(train, keys=keys)
    assert tuple(s.stats) == keys == ("0.weight", "0.bias", "3.weight", "3.bias")
    out = s.apply(train[0])
    assert out["1.running_var"] is train[0]["1.running_var"]


def test_json_round_trip():
    s = fit_standardization(zoo(2, seed=10))
    loaded = Standardization.from_dict(json.loads(json.dumps(s.to_dict(), allow_nan=False)))
    assert loaded == s


def test_bad_input():
    train = zoo(2, seed=11)
    with pytest.raises(FormatError, match="zero state dicts"):
        fit_standardization([])
    with pytest.raises(FormatError, match=r"state dict 1, entry '0.weight'.*shape"):
        fit_standardization([train[0], {**train[1], "0.weight": torch.ones(2)}])
    with pytest.raises(FormatError, match=r"state dict 1, entry '3.bias'.*non-finite"):
        fit_standardization([train[0], {**train[1], "3.bias": torch.full((4,), float("nan"))}])
    with pytest.raises(FormatError, match=r"'missing'"):
        fit_standardization(train, keys=["missing"])
    with pytest.raises(FormatError, match="distinct"):
        fit_standardization(train, keys=["0.weight", "0.weight"])
    s = fit_standardization(train)
    with pytest.raises(FormatError, match=r"'0.bias'.*missing"):
        s.apply({k: v for k, v in train[0].items() if k != "0.bias"})
    with pytest.raises(FormatError, match=r"'3.weight'.*shape \[4, 2\].*\[4, 3\]"):
        s.invert({**train[0], "3.weight": torch.ones(4, 2)})


def test_malformed_description():
    good = fit_standardization(zoo(2, seed=12)).to_dict()
    cases = {
        "std finite and positive": lambda d: d["tensors"][0].update(std=0.0),
        "count": lambda d: d["tensors"][0].update(count=0),
        "shape": lambda d: d["tensors"][0].update(shape=[-1]),
        "unique": lambda d: d["tensors"].append(dict(d["tensors"][0])),
        "sane-standardization": lambda d: d.update(format="x"),
        "malformed": lambda d: d["tensors"][0].pop("mean"),
    }
    for message, change in cases.items():
        bad = json.loads(json.dumps(good))
        change(bad)
        with pytest.raises(FormatError, match=message):
            Standardization.from_dict(bad)
