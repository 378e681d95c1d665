"""Memorization controls: nearest prompt, distance, agreement and the two baselines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sane.downstream.memorization import agreement, flatten, memorization_controls

KEYS = ("weight", "bias")


def _linear(state):
    net = nn.Linear(4, 3)
    net.load_state_dict(state)
    return net


def test_controls_measure_distance_agreement_and_score_both_baselines():
    g = torch.Generator().manual_seed(0)
    prompts = [_linear_state(g) for _ in range(2)]
    offset = torch.randn(15, generator=g, dtype=torch.float64)
    offset *= 3 / offset.norm()
    sample = {"weight": prompts[1]["weight"] + offset[:12].view(3, 4).float(),
              "bias": prompts[1]["bias"] + offset[12:].float()}
    inputs = torch.randn(200, 4, generator=g)
    seen = []

    def score(state):
        seen.append(state)
        return float(torch.linalg.vector_norm(flatten(state, KEYS) - flatten(prompts[1], KEYS)))

    out = memorization_controls([sample], prompts, KEYS, load=_linear, score=score,
                                inputs=inputs, seed=0)
    assert out.nearest == [1] and out.distance[0] == pytest.approx(3, rel=1e-5)
    assert out.agreement[0] == agreement(_linear(sample), _linear(prompts[1]), inputs)
    assert 0 < out.agreement[0] < 1
    # The noised prompt lies about as far from its prompt as the sample does.
    assert out.baselines["noised prompts"][0] == pytest.approx(3, rel=0.5)
    average = seen[-1]
    for key in KEYS:
        torch.testing.assert_close(average[key], (prompts[0][key] + prompts[1][key]) / 2)
    assert out.prompt_distance == pytest.approx(
        float((flatten(prompts[0], KEYS) - flatten(prompts[1], KEYS)).norm()))
    high, low = out.to_dict([10.0])["baselines"], out.to_dict([0.0])["baselines"]
    assert high["prompt averages"]["mean"] == out.baselines["prompt averages"][0]
    assert all(b["samples_beat_it"] is True for b in high.values())
    assert all(b["samples_beat_it"] is False for b in low.values())


def test_a_single_prompt_has_no_average_baseline():
    g = torch.Generator().manual_seed(1)
    prompt = _linear_state(g)
    out = memorization_controls([prompt], [prompt], KEYS, load=_linear, score=lambda s: 0.0,
                                inputs=torch.randn(10, 4, generator=g))
    assert out.distance == [0.0] and out.agreement == [1.0]
    assert out.baselines["prompt averages"] == [] and out.prompt_distance is None
    assert out.to_dict([0.0])["baselines"]["prompt averages"]["samples_beat_it"] is None


def _linear_state(g):
    return {"weight": torch.randn(3, 4, generator=g), "bias": torch.randn(3, generator=g)}


def test_baselines_get_the_samplers_selection():
    g = torch.Generator().manual_seed(2)
    prompts = [_linear_state(g) for _ in range(3)]
    calls = []

    def score(state):
        calls.append(state)
        return float(len(calls))  # later candidates score higher

    out = memorization_controls(prompts[:2], prompts, KEYS, load=_linear, score=score,
                                inputs=torch.randn(10, 4, generator=g), candidates=4)
    assert len(calls) == 2 * 4 + 2 * 4  # every kept model's baselines: 4 candidates each
    assert out.baselines["noised prompts"] == [4.0, 8.0]  # the best of each four
    assert out.baselines["prompt averages"] == [12.0, 16.0]
