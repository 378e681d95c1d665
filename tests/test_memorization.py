"""Novelty of kept models: nearest prompt, distance, agreement, error overlap, nearest
training model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sane.downstream.memorization import (
    agreement,
    error_overlap,
    novelty,
    predictions,
    prompt_distance,
    training_distance,
)
from sane.downstream.sampling import flatten

KEYS = ("weight", "bias")


def _linear(state):
    net = nn.Linear(4, 3)
    net.load_state_dict(state)
    return net


def _linear_state(g):
    return {"weight": torch.randn(3, 4, generator=g), "bias": torch.randn(3, generator=g)}


def _offset(state, norm, g):
    offset = torch.randn(15, generator=g, dtype=torch.float64)
    offset *= norm / offset.norm()
    return {"weight": state["weight"] + offset[:12].view(3, 4).float(),
            "bias": state["bias"] + offset[12:].float()}


def test_novelty_measures_against_the_nearest_prompt_and_training_model():
    g = torch.Generator().manual_seed(0)
    prompts = [_linear_state(g) for _ in range(2)]
    training = [_linear_state(g) for _ in range(3)]
    sample = _offset(prompts[1], 3.0, g)
    inputs = torch.randn(200, 4, generator=g)
    labels = torch.randint(0, 3, (200,), generator=g)
    [n] = novelty([sample], prompts, KEYS, load=_linear, inputs=inputs, labels=labels,
                  training=training)
    assert n.nearest_prompt == 1 and n.distance == pytest.approx(3, rel=1e-5)
    assert n.agreement == agreement(_linear(sample), _linear(prompts[1]), inputs)
    assert 0 < n.agreement < 1
    own, prompt = predictions(_linear(sample), inputs), predictions(_linear(prompts[1]), inputs)
    assert n.error_overlap == error_overlap(own, prompt, labels)
    expected = min(float((flatten(sample, KEYS) - flatten(t, KEYS)).norm()) for t in training)
    assert n.nearest_training == pytest.approx(expected)
    [alone] = novelty([sample], prompts, KEYS, load=_linear, inputs=inputs, labels=labels)
    assert alone.nearest_training is None


def test_error_overlap_is_the_jaccard_index_of_the_error_sets():
    labels = torch.tensor([0, 0, 0, 0, 0])
    a = torch.tensor([1, 1, 0, 0, 0])  # wrong on 0, 1
    b = torch.tensor([0, 1, 1, 0, 0])  # wrong on 1, 2
    assert error_overlap(a, b, labels) == pytest.approx(1 / 3)
    assert error_overlap(labels, labels, labels) == 1.0  # neither wrong anywhere
    assert error_overlap(a, a, labels) == 1.0


def test_a_copy_has_distance_zero_full_agreement_and_shared_errors():
    g = torch.Generator().manual_seed(1)
    prompt = _linear_state(g)
    inputs = torch.randn(50, 4, generator=g)
    [n] = novelty([prompt], [prompt], KEYS, load=_linear, inputs=inputs,
                  labels=torch.zeros(50, dtype=torch.long))
    assert (n.distance, n.agreement, n.error_overlap) == (0.0, 1.0, 1.0)


def test_spreads_of_prompts_and_training_models():
    g = torch.Generator().manual_seed(2)
    base = _linear_state(g)
    near = _offset(base, 1.0, g)
    far = _offset(base, 10.0, g)
    assert prompt_distance([base], KEYS) is None and training_distance([base], KEYS) is None
    pairs = [float((flatten(a, KEYS) - flatten(b, KEYS)).norm())
             for a, b in ((base, near), (base, far), (near, far))]
    assert prompt_distance([base, near, far], KEYS) == pytest.approx(sum(pairs) / 3)
    # nearest other model: base 1, near 1, far min(10, |far - near|); the median is 1
    assert training_distance([base, near, far], KEYS) == pytest.approx(1.0, rel=1e-5)
