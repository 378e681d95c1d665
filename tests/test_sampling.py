"""Sampling: independent per-token KDE draws, sorted best models, batch-norm conditioning,
`sane sample` end to end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from sampling_helpers import IdentityAutoencoder, IdentitySANE
from sane.cli import main
from sane.downstream import (
    SamplingConfig,
    Target,
    condition_batchnorm,
    kde_sample,
    sample_models,
)
from sane.downstream.sampling import latent_spread
from sane.errors import ConfigError, FormatError
from sane.weights import fit_standardization, tokenize
from sane.weights.tokenizer import Tokenizer
from sane.zoo import ArchConfig, build_model

ARCH = ArchConfig(name="cnn_s")


def test_each_draw_is_one_prompt_plus_independent_noise():
    g = torch.Generator().manual_seed(0)
    prompts = torch.randn(4, 48, 3, generator=g)
    exact = kde_sample(prompts, 20, 0.0, torch.Generator().manual_seed(1))
    # With no noise every sample is one prompt's whole latent sequence...
    whole = (exact[:, None] == prompts[None]).flatten(2).all(-1)  # [20, 4]
    assert whole.sum(1).tolist() == [1] * 20
    assert len(set(whole.float().argmax(1).tolist())) > 1  # ...not always the same one
    noisy = kde_sample(torch.zeros(1, 48, 3), 200, 0.5, torch.Generator().manual_seed(2))
    assert noisy.std().item() == pytest.approx(0.5, rel=0.05)
    assert not torch.allclose(noisy[:, 0], noisy[:, 1])  # independent across tokens
    assert torch.equal(kde_sample(prompts, 6, 0.2, torch.Generator().manual_seed(3)),
                       kde_sample(prompts, 6, 0.2, torch.Generator().manual_seed(3)))


def test_latent_spread_is_the_mean_per_dimension_standard_deviation():
    z = torch.stack([torch.tensor([[0.0, 10.0], [2.0, 10.0]]),
                     torch.tensor([[4.0, 14.0], [6.0, 14.0]])])  # [E=2, N=2, d_z=2]
    # dimension 0: values 0, 2, 4, 6 (std sqrt(5)); dimension 1: 10, 10, 14, 14 (std 2)
    assert latent_spread(z) == pytest.approx((5**0.5 + 2) / 2)


def _prompts(seeds):
    states = [build_model(ARCH, seed=s).state_dict() for s in seeds]
    standardization = fit_standardization(states)
    tokens = [tokenize(standardization.apply(s)) for s in states]
    tokenizer = Tokenizer(tokens[0].manifest, standardization)
    return states, tokenizer, tokens[0].positions, torch.stack([t.tokens for t in tokens])


def _first_weight_sum(net: nn.Module) -> float:
    return float(net.state_dict()["module_list.0.weight"].sum())


def test_one_prompt_without_noise_samples_the_prompt_itself():
    states, tokenizer, positions, prompts = _prompts([1])
    target = Target(build=lambda: build_model(ARCH), score=_first_weight_sum,
                    images=torch.zeros(4, 1, 28, 28))
    out = sample_models(IdentityAutoencoder(201), prompts, positions, tokenizer,
                        target, SamplingConfig(samples=3, keep=2, bandwidth=0.0))
    assert len(out.states) == 2 and out.latents.shape == (2, 48, 201)
    for state in out.states:
        for key, value in states[0].items():
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)


def test_bootstrapping_returns_the_best_of_the_last_round_sorted():
    _, tokenizer, positions, prompts = _prompts([1, 2, 3])
    target = Target(build=lambda: build_model(ARCH), score=_first_weight_sum,
                    images=torch.zeros(4, 1, 28, 28))
    out = sample_models(IdentityAutoencoder(201), prompts, positions, tokenizer,
                        target, SamplingConfig(samples=12, keep=4, rounds=3, bandwidth=0.3))
    # The noise is relative to the spread of each round's prompts (the kept latents after
    # the first round).
    assert out.rounds[0]["noise_std"] == pytest.approx(0.3 * latent_spread(prompts))
    assert out.rounds[-1]["noise_std"] > 0
    absolute = sample_models(IdentityAutoencoder(201), prompts, positions, tokenizer, target,
                             SamplingConfig(samples=2, keep=1, bandwidth=0.3, relative=False))
    assert absolute.rounds[0]["noise_std"] == 0.3
    assert out.scores == sorted(out.scores, reverse=True)
    assert [r["round"] for r in out.rounds] == [1, 2, 3]
    assert out.scores[0] == pytest.approx(out.rounds[-1]["best"])
    assert sum(out.scores) / 4 == pytest.approx(out.rounds[-1]["kept_mean"])
    for state, score in zip(out.states, out.scores):  # each score belongs to its model
        assert float(state["module_list.0.weight"].sum()) == pytest.approx(score, abs=1e-4)


def test_gaussian_prior_needs_no_prompts_and_bad_prompts_are_refused():
    _, tokenizer, positions, prompts = _prompts([1])
    target = Target(build=lambda: build_model(ARCH), score=_first_weight_sum,
                    images=torch.zeros(4, 1, 28, 28))
    model = IdentityAutoencoder(201)
    out = sample_models(model, None, positions, tokenizer, target,
                        SamplingConfig(samples=4, keep=1, prior_std=1.0))
    assert len(out.states) == 1
    with pytest.raises(FormatError, match="prompts must be"):
        sample_models(model, None, positions, tokenizer, target)
    with pytest.raises(FormatError, match="positions must be"):
        sample_models(model, prompts, positions[:5], tokenizer, target)
    with pytest.raises(ConfigError, match="keep must lie"):
        SamplingConfig(samples=3, keep=5)


def test_batchnorm_conditioning_reestimates_statistics_and_nothing_else():
    net = nn.Sequential(nn.Dropout(0.9), nn.BatchNorm2d(3))
    with torch.no_grad():
        net[1].weight.fill_(2.0)
    net[1].running_mean.fill_(5.0)
    images = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0)) + 1.5
    condition_batchnorm(net, images, batches=4, batch_size=16,
                        generator=torch.Generator().manual_seed(1))
    # Four batches of 16 cover the 64 images once: the cumulative mean is theirs, and dropout
    # stayed off (in train mode it would have scaled the inputs).
    torch.testing.assert_close(net[1].running_mean, images.mean(dim=(0, 2, 3)))
    assert torch.equal(net[1].weight, torch.full((3,), 2.0))
    assert net[1].momentum == 0.1 and not net.training and int(net[1].num_batches_tracked) == 4
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        condition_batchnorm(net, images, batch_size=1)


@pytest.mark.slow
def test_sane_sample_end_to_end(tiny_run, tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", str(tiny_run[0]), "--out", str(out), "--prompts", "3", "--samples", "6",
                 "--keep", "2", "--rounds", "2"]) == 0
    report = json.loads((out / "samples.json").read_text())
    scores = [s["score"] for s in report["samples"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)
    [group] = report["architectures"]
    assert len(group["rounds"]) == 2 and group["rounds"][0]["noise_std"] > 0
    assert set(group["memorization"]["baselines"]) == {"noised prompts", "prompt averages"}
    assert [p["epoch"] for p in report["prompts"]] == [2, 2, 2]
    net = build_model(ARCH)
    net.load_state_dict(load_file(str(out / "sample_000.safetensors")))
    assert "| round | noise std | mean |" in capsys.readouterr().out
    assert main(["sample", str(tiny_run[0]), "--out", str(tmp_path / "x"), "--prompts", "99"]) == 2
    assert "99 prompts were asked for" in capsys.readouterr().err


def test_sampling_for_a_new_task_scores_on_that_dataset(tiny_run, tmp_path):
    from sane.stages.sample import sample_from_run

    config = SamplingConfig(samples=3, keep=1)
    sample_from_run(tiny_run[0], tmp_path / "a", prompts=2, config=config, dataset="digits")
    report = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert report["request"]["dataset"] == "digits" and len(report["prompts"]) == 2
    with pytest.raises(ConfigError, match="'mnist1d' cannot feed the zoo's cnn_s"):
        sample_from_run(tiny_run[0], tmp_path / "b", config=config, dataset="mnist1d")


def _val_acc(store, row):
    from sane.zoo import Zoo

    model_id, epoch, _ = store.rows[row]
    return {r["epoch"]: r for r in Zoo.open(store.zoo_path).metrics(model_id)}[epoch]["val_acc"]


@pytest.mark.slow
def test_coherent_draws_of_trained_prompts_score_as_their_prompt(trained_store, monkeypatch,
                                                                 tmp_path):
    """An exact autoencoder and no noise: every sample is one whole prompt, in its own
    architecture (the zoo mixes tanh and relu), and scores what that prompt scored in
    training; the memorization controls then see copies."""
    from sane.stages import sample as stage

    monkeypatch.setattr(stage, "SANE", IdentitySANE)
    report = stage.sample_from_run(
        tmp_path / "run", tmp_path / "out", store=trained_store.path, prompts=5,
        config=SamplingConfig(samples=6, keep=3, bandwidth=0.0))
    rows = {(m, e): r for r, (m, e, _) in enumerate(trained_store.rows)}
    archs = {g["index"]: ArchConfig.from_dict(g["architecture"]) for g in report.architectures}
    activations = {i: arch.activation for i, arch in archs.items()}
    assert sorted(activations.values()) == ["relu", "tanh"]
    for prompt in report.prompts:
        row = rows[prompt["model"], prompt["epoch"]]
        assert trained_store.architecture(row).activation == activations[prompt["architecture"]]
        assert prompt["score"] == pytest.approx(_val_acc(trained_store, row), abs=0.01)
    assert min(p["score"] for p in report.prompts) > 0.3  # trained, far above chance
    for sample in report.samples:
        prompt = next(p for p in report.prompts if p["model"] == sample["nearest_prompt"])
        assert prompt["architecture"] == sample["architecture"]
        assert sample["score"] == pytest.approx(prompt["score"], abs=1e-9)
        assert sample["distance"] < 1e-3 and sample["agreement"] == 1.0
        net = build_model(archs[sample["architecture"]])  # saved under its own keys
        net.load_state_dict(load_file(str(tmp_path / "out" / sample["file"])))
    for group in report.architectures:
        baselines = group["memorization"]["baselines"]
        # Copies are what the noised-prompt baseline is at distance zero.
        assert baselines["noised prompts"]["samples_beat_it"] is False
        assert len(baselines["prompt averages"]["scores"]) == 3
    assert "do not beat the noised prompts baseline" in (tmp_path / "out" / "samples.md"
                                                         ).read_text()


def test_independent_tokens_make_a_patchwork_that_fails(trained_store):
    """The measured reason for coherent draws: tokens taken each from another trained prompt
    (the earlier sampler) make a network far worse than its prompts."""
    from sane.downstream.sampling import score_state
    from sane.stages.prompts import target_data
    from sane.stages.sample import zoo_target

    data = target_data(trained_store)
    rows = [r for r in trained_store.split_rows("train").tolist()
            if trained_store.rows[r][1] == 3 and trained_store.architecture(r).activation == "relu"]
    target = zoo_target(trained_store.architecture(rows[0]), data)
    tokens = torch.tensor(trained_store.tokens[rows])
    g = torch.Generator().manual_seed(0)
    source = torch.randint(0, len(rows), (tokens.shape[1],), generator=g)
    patchwork = tokens[source, torch.arange(tokens.shape[1])]

    def score(t):
        return score_state(trained_store.tokenizer.decode(t), target, 1, g)

    prompts = [score(t) for t in tokens]
    assert score(patchwork) < min(prompts) - 0.1
