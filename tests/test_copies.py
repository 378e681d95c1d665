"""Copy baselines of equal budget: each replays the sampler's rounds in weight space."""

from __future__ import annotations

import pytest
import torch

from sampling_helpers import IdentityAutoencoder
from sane.downstream.copies import COPIES, copy_baselines
from sane.downstream.sampling import SamplingConfig, Target, flatten
from sane.pipeline import Pipeline
from sane.weights import fit_standardization, tokenize
from sane.weights.tokenizer import Tokenizer
from sane.zoo import ArchConfig, build_model

ARCH = ArchConfig(name="cnn_s")


def _setup(seeds, scale=1.0):
    """Prompts of CNN-s from ``seeds`` (the second conv's weights times ``scale``)."""
    states = [build_model(ARCH, seed=s).state_dict() for s in seeds]
    for state in states:
        state["module_list.3.weight"] *= scale
    standardization = fit_standardization(states)
    tokens = [tokenize(standardization.apply(s)) for s in states]
    tokenizer = Tokenizer(tokens[0].manifest, standardization)
    pipe = Pipeline(IdentityAutoencoder(201), tokenizer)  # latents are the tokens
    return [tokenizer.canonical(s) for s in states], tokenizer, pipe


def _first_weight_sum(net):
    return float(net.state_dict()["module_list.0.weight"].sum())


TARGET = Target(build=lambda seed: build_model(ARCH, seed=seed), select=_first_weight_sum,
                report=lambda net: -_first_weight_sum(net), images=torch.zeros(4, 1, 28, 28))


def test_every_baseline_draws_and_keeps_as_many_per_round_as_the_sampler():
    states, tokenizer, pipe = _setup([1, 2, 3])
    config = SamplingConfig(samples=6, keep=2, rounds=3, bandwidth=0.3)
    samples = pipe.sample_selected(states, TARGET, config)
    runs = copy_baselines(states, samples, tokenizer, TARGET, config)
    assert list(runs) == list(COPIES)
    for run in runs.values():
        assert [d.round for d in run.draws] == [d.round for d in samples.draws]
        assert [d.source for d in run.draws] == [d.source for d in samples.draws]
        assert [len(k) for k in run.kept] == [2, 2, 2] and len(run.states) == 2
        # kept by the selection score, best first, among the last round's candidates
        last = [d.scores.selection for d in run.draws if d.round == 3]
        assert [s.selection for s in run.scores] == sorted(last, reverse=True)[:2]
        assert [s.report for s in run.scores] == pytest.approx([-s.selection
                                                                for s in run.scores])


def test_noise_lies_exactly_at_each_draws_distance_from_the_same_source():
    states, tokenizer, pipe = _setup([1, 2])
    config = SamplingConfig(samples=5, keep=5, bandwidth=0.5)
    samples = pipe.sample_selected(states, TARGET, config)
    runs = copy_baselines(states, samples, tokenizer, TARGET, config,
                          names=("noise", "per-tensor noise"))
    for run in runs.values():
        for ours, theirs in zip(samples.draws, run.draws):
            assert theirs.source == ours.source
            assert theirs.distance == pytest.approx(ours.distance, rel=1e-6)


def test_per_tensor_noise_follows_each_tensors_scale_and_isotropic_noise_does_not():
    states, tokenizer, pipe = _setup([1, 2, 3, 4], scale=5.0)
    config = SamplingConfig(samples=1, keep=1, bandwidth=2.0)
    samples = pipe.sample_selected(states, TARGET, config)
    runs = copy_baselines(states, samples, tokenizer, TARGET, config,
                          names=("noise", "per-tensor noise"))
    source = states[samples.draws[0].source]
    stats = tokenizer.standardization.stats
    big, small = "module_list.3.weight", "module_list.0.weight"
    ratio = stats[big].std / stats[small].std
    assert ratio == pytest.approx(5, rel=0.2)  # the two tensors have different scales
    for name, expected in (("noise", 1.0), ("per-tensor noise", ratio)):
        state = runs[name].states[0]
        spread = {k: float((state[k].double() - source[k].double()).std()) for k in (big, small)}
        assert spread[big] / spread[small] == pytest.approx(expected, rel=0.25)


def test_averages_are_midpoints_of_two_members_of_the_bank():
    states, tokenizer, pipe = _setup([1, 2, 3])
    config = SamplingConfig(samples=4, keep=4, bandwidth=0.1)
    samples = pipe.sample_selected(states, TARGET, config)
    run = copy_baselines(states, samples, tokenizer, TARGET, config, names=("averages",))
    keys = tokenizer.manifest.tokenized_keys()
    flat = [flatten(s, keys) for s in states]
    midpoints = [(flat[i] + flat[j]) / 2 for i in range(3) for j in range(i + 1, 3)]
    for state in run["averages"].states:
        assert min(float((flatten(state, keys) - m).norm()) for m in midpoints) < 1e-4


def test_averages_need_two_models_and_the_prior_gets_random_initializations():
    states, tokenizer, pipe = _setup([1])
    config = SamplingConfig(samples=3, keep=1)
    samples = pipe.sample_selected(states, TARGET, config)
    assert "averages" not in copy_baselines(states, samples, tokenizer, TARGET, config)
    prior = SamplingConfig(samples=3, keep=1, prior_std=1.0)
    samples = pipe.sample_selected(states, TARGET, prior)
    runs = copy_baselines(states, samples, tokenizer, TARGET, prior, names=("noise",))
    keys = tokenizer.manifest.tokenized_keys()
    initial = [flatten(tokenizer.canonical(build_model(ARCH, seed=s).state_dict()), keys)
               for s in range(3)]
    kept = flatten(runs["noise"].states[0], keys)
    assert all(d.source is None and d.distance is None for d in runs["noise"].draws)
    assert min(float((kept - v).norm()) for v in initial) > 1  # fresh seeds, not 0, 1, 2
    again = copy_baselines(states, samples, tokenizer, TARGET, prior, names=("noise",))
    assert torch.equal(flatten(again["noise"].states[0], keys), kept)  # seeded
