"""Sampling: independent per-token KDE draws, sorted best models, batch-norm conditioning,
`sane sample` end to end."""

from __future__ import annotations

import dataclasses
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
)
from sane.downstream.sampling import flatten, latent_spread
from sane.errors import ConfigError, FormatError
from sane.pipeline import Pipeline
from sane.weights import fit_standardization, tokenize
from sane.weights.tokenizer import Tokenizer
from sane.zoo import ArchConfig, build_model

ARCH = ArchConfig(name="cnn_s")


def test_each_draw_is_one_prompt_plus_independent_noise():
    g = torch.Generator().manual_seed(0)
    prompts = torch.randn(4, 48, 3, generator=g)
    exact, sources = kde_sample(prompts, 20, 0.0, torch.Generator().manual_seed(1))
    # With no noise every sample is one prompt's whole latent sequence, the one it names...
    whole = (exact[:, None] == prompts[None]).flatten(2).all(-1)  # [20, 4]
    assert whole.sum(1).tolist() == [1] * 20
    assert whole.float().argmax(1).tolist() == sources
    assert len(set(sources)) > 1  # ...not always the same one
    noisy, _ = kde_sample(torch.zeros(1, 48, 3), 200, 0.5, torch.Generator().manual_seed(2))
    assert noisy.std().item() == pytest.approx(0.5, rel=0.05)
    assert not torch.allclose(noisy[:, 0], noisy[:, 1])  # independent across tokens
    assert torch.equal(kde_sample(prompts, 6, 0.2, torch.Generator().manual_seed(3))[0],
                       kde_sample(prompts, 6, 0.2, torch.Generator().manual_seed(3))[0])


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
    pipe = Pipeline(IdentityAutoencoder(201), tokenizer)  # latents are the tokens
    return states, pipe, torch.stack([t.tokens for t in tokens])


def _first_weight_sum(net: nn.Module) -> float:
    return float(net.state_dict()["module_list.0.weight"].sum())


def _target(report=lambda net: -_first_weight_sum(net)) -> Target:
    """CNN-s selected by the sum of its first weight; reported by ``report`` (by default
    the opposite, so that selection on the report score would show)."""
    return Target(build=lambda seed: build_model(ARCH, seed=seed), select=_first_weight_sum,
                  report=report, images=torch.zeros(4, 1, 28, 28))


def test_one_prompt_without_noise_samples_the_prompt_itself():
    states, pipe, _ = _prompts([1])
    out = pipe.sample_selected(states, _target(),
                               SamplingConfig(samples=3, keep=2, bandwidth=0.0))
    assert len(out.states) == 2 and out.latents.shape == (2, 48, 201)
    assert [(d.round, d.source) for d in out.draws] == [(1, 0)] * 3
    assert all(d.distance == pytest.approx(0, abs=1e-4) for d in out.draws)
    for state in out.states:
        for key, value in states[0].items():
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)


def test_bootstrapping_returns_the_best_of_the_last_round_by_selection_sorted():
    states, pipe, prompts = _prompts([1, 2, 3])
    target = _target()
    out = pipe.sample_selected(states, target,
                               SamplingConfig(samples=12, keep=4, rounds=3, bandwidth=0.3))
    # The noise is relative to the spread of each round's prompts (the kept latents after
    # the first round).
    assert out.noise_std[0] == pytest.approx(0.3 * latent_spread(prompts))
    assert len(out.noise_std) == 3 and out.noise_std[-1] > 0
    absolute = pipe.sample_selected(
        states, target, SamplingConfig(samples=2, keep=1, bandwidth=0.3, relative=False))
    assert absolute.noise_std == [0.3]
    assert [d.round for d in out.draws] == [1] * 12 + [2] * 12 + [3] * 12
    assert [len(k) for k in out.kept] == [4, 4, 4]
    # Kept by the selection score, best first; the report score (here its opposite) is
    # recorded, never used to choose.
    selection = [s.selection for s in out.scores]
    assert selection == sorted(selection, reverse=True)
    last = [d.scores.selection for d in out.draws[24:]]
    assert selection == sorted(last, reverse=True)[:4]
    assert [out.draws[i].scores for i in out.kept[-1]] == out.scores
    for state, scores in zip(out.states, out.scores):  # each score belongs to its model
        assert float(state["module_list.0.weight"].sum()) == pytest.approx(scores.selection,
                                                                           abs=1e-4)
        assert scores.report == pytest.approx(-scores.selection)
    # Each draw names the prompt it came from (round 1: the prompts; later: the previous
    # round's kept models) and its distance to that prompt's weights.
    first = out.draws[0]
    assert first.source in range(3) and first.distance > 0
    assert {d.source for d in out.draws[12:]} <= set(range(4))


def test_draw_distances_are_measured_in_aligned_weight_space():
    states, pipe, _ = _prompts([1, 2])
    out = pipe.sample_selected(states, _target(),
                               SamplingConfig(samples=4, keep=4, bandwidth=0.5))
    keys = pipe.tokenizers[0].manifest.tokenized_keys()
    for draw, state in zip(sorted(out.draws, key=lambda d: -d.scores.selection), out.states):
        expected = torch.linalg.vector_norm(flatten(state, keys) - flatten(states[draw.source],
                                                                           keys))
        assert draw.distance == pytest.approx(float(expected), rel=1e-4)


def test_gaussian_prior_needs_no_prompts_and_bad_prompts_are_refused():
    states, pipe, _ = _prompts([1])
    target = _target()
    # With a prior the one model given only names the architecture.
    out = pipe.sample_selected(states, target, SamplingConfig(samples=4, keep=1, prior_std=1.0))
    assert len(out.states) == 1
    assert all(d.source is None and d.distance is None for d in out.draws)
    with pytest.raises(ConfigError, match="at least one prompt"):
        pipe.sample_selected([], target)
    with pytest.raises(FormatError, match="model 1: the state dict does not fit"):
        pipe.sample_selected([states[0], build_model(ArchConfig(name="mlp")).state_dict()],
                             target)
    with pytest.raises(FormatError, match=r"positions must be one \[N, 3\] per tokenizer"):
        Pipeline(pipe.model, pipe.tokenizers, positions=[pipe.positions[0][:5]])
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
def test_sane_sample_end_to_end_selects_on_validation_and_reports_test(tiny_run, tmp_path,
                                                                       capsys):
    from sane.stages.prompts import target_data
    from sane.stages.sample import SampleResult
    from sane.weights.store import TokenStore
    from sane.zoo.evaluation import accuracy

    out = tmp_path / "samples"
    assert main(["sample", str(tiny_run[0]), "--out", str(out), "--prompts", "3", "--samples", "6",
                 "--keep", "2", "--rounds", "2"]) == 0
    result = SampleResult.load(out)
    assert (result.selection_split, result.report_split) == ("val", "test")
    assert len(result.samples) == 2
    selection = [s.selection for s in result.samples]
    assert selection == sorted(selection, reverse=True)
    # Both scores of every kept model are what the saved model scores on each split.
    data = target_data(TokenStore.open(result.request.store))
    for kept in result.samples:
        net = build_model(ARCH)
        net.load_state_dict(load_file(str(out / kept.file)))
        assert kept.selection == accuracy(net, data.val.x, data.val.y)
        assert kept.report == accuracy(net, data.test.x, data.test.y)
    assert [p.epoch for p in result.prompts] == [2, 2, 2]
    assert result.architectures[0].noise_std[0] > 0 and len(result.architectures[0].noise_std) == 2
    # every baseline: as many candidates per round as SANE, as many kept
    assert set(result.baselines) == {"noise", "per-tensor noise", "averages"}
    for name, kept in result.baselines.items():
        assert len(kept) == 2
        assert ([d.round for d in result.draws[name]]
                == [d.round for d in result.draws["SANE"]] == [1] * 6 + [2] * 6)
        assert sum(d.kept for d in result.draws[name]) == 4
    printed = capsys.readouterr().out
    assert "| round | noise std | draws: val | draws: test | kept: test |" in printed
    assert "Against the strongest copy baseline (highest on val)" in printed
    assert main(["sample", str(tiny_run[0]), "--out", str(tmp_path / "x"), "--prompts", "99"]) == 2
    assert "99 prompts were asked for" in capsys.readouterr().err


@pytest.mark.slow
def test_a_bandwidth_sweep_writes_the_frontier(tiny_run, tmp_path, capsys):

    out = tmp_path / "frontier"
    assert main(["sample", str(tiny_run[0]), "--out", str(out), "--prompts", "3", "--samples", "4",
                 "--keep", "2", "--bandwidth", "0.1,1"]) == 0
    frontier = json.loads((out / "frontier.json").read_text())
    assert [p["bandwidth"] for p in frontier["points"]] == [0.1, 1.0]
    near, far = frontier["points"]
    assert far["distance"] > near["distance"] > 0
    assert set(near["draws"]) == {"SANE", "noise", "per-tensor noise"}
    assert frontier["recommended"] in (0.1, 1.0)
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "bandwidth-0.1" / "samples.json").is_file()
    assert "| bandwidth | distance |" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse's own usage error
        main(["sample", str(tiny_run[0]), "--out", str(out), "--bandwidth", "0.1,x"])
    assert "expected numbers separated by commas" in capsys.readouterr().err


def test_sampling_for_a_new_task_scores_on_that_dataset(tiny_run, tmp_path):
    from sane.stages.sample import sample_from_run

    config = SamplingConfig(samples=3, keep=1)
    report = sample_from_run(tiny_run[0], tmp_path / "a", prompts=2, config=config,
                             dataset="digits")
    assert report.request.dataset == "digits" and len(report.prompts) == 2
    with pytest.raises(ConfigError, match="'mnist1d' cannot feed the zoo's cnn_s"):
        sample_from_run(tiny_run[0], tmp_path / "b", config=config, dataset="mnist1d")


def test_prompts_from_held_out_models_of_the_store(tiny_run, tmp_path, capsys):
    from sane.stages.prompts import SampleRequest
    from sane.stages.sample import SampleResult, sample_from_run
    from sane.weights.store import TokenStore

    config = SamplingConfig(samples=2, keep=1)
    result = sample_from_run(tiny_run[0], tmp_path / "a", prompts=2, config=config,
                             prompt_split="test")
    store = TokenStore.open(result.request.store)
    test_models = sorted({store.rows[r][0] for r in store.split_rows("test").tolist()})
    assert [p.model for p in result.prompts] == test_models[:2]
    assert result.request.prompt_split == "test"
    assert SampleResult.load(tmp_path / "a").request == result.request
    saved = json.loads((tmp_path / "a" / "samples.json").read_text())["request"]
    assert saved["prompt_split"] == "test"
    # the default split is not written, so that earlier requests read the same
    default = dataclasses.replace(result.request, prompt_split="train")
    assert "prompt_split" not in default.to_dict()
    with pytest.raises(ConfigError, match="split, not 'holdout'"):
        SampleRequest("r", None, 1, None, False, config, None, None, prompt_split="holdout")
    assert main(["sample", str(tiny_run[0]), "--out", str(tmp_path / "b"), "--prompt-split",
                 "val", "--prompts", "99"]) == 2
    assert "val-split models are in the store; 99 prompts" in capsys.readouterr().err


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

    monkeypatch.setattr(stage, "SANE", IdentitySANE())
    report = stage.sample_from_run(
        tmp_path / "run", tmp_path / "out", store=trained_store.path, prompts=5,
        config=SamplingConfig(samples=6, keep=3, bandwidth=0.0))
    rows = {(m, e): r for r, (m, e, _) in enumerate(trained_store.rows)}
    archs = {g.index: ArchConfig.from_dict(g.architecture) for g in report.architectures}
    activations = {i: arch.activation for i, arch in archs.items()}
    assert sorted(activations.values()) == ["relu", "tanh"]
    for prompt in report.prompts:
        row = rows[prompt.model, prompt.epoch]
        assert trained_store.architecture(row).activation == activations[prompt.architecture]
        assert prompt.selection == pytest.approx(_val_acc(trained_store, row), abs=0.01)
    assert min(p.report for p in report.prompts) > 0.3  # trained, far above chance
    for sample in report.samples:
        prompt = next(p for p in report.prompts if p.model == sample.nearest_prompt)
        assert prompt.architecture == sample.architecture
        assert (sample.selection, sample.report) == pytest.approx((prompt.selection,
                                                                   prompt.report), abs=1e-9)
        assert sample.distance < 1e-3 and sample.agreement == 1.0
        assert sample.error_overlap == 1.0 and sample.nearest_training < 1e-3
        net = build_model(archs[sample.architecture])  # saved under its own keys
        net.load_state_dict(load_file(str(tmp_path / "out" / sample.file)))
    # Copies are what the noise baselines are at distance zero: SANE is level with them.
    for name in ("noise", "per-tensor noise"):
        assert report.baseline_mean(name) == pytest.approx(report.kept_mean, abs=1e-9)
    assert len(report.baselines["averages"]) == 3 * len(report.architectures)
    assert "SANE's models level with" in (tmp_path / "out" / "samples.md").read_text()


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
        return score_state(trained_store.tokenizer.decode(t), target, 1, g).report

    prompts = [score(t) for t in tokens]
    assert score(patchwork) < min(prompts) - 0.1
