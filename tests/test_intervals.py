"""Bootstrap intervals over groups (models, prompts) and the words they allow: known
answers and coverage."""

from __future__ import annotations

import numpy as np
import pytest

from sane.downstream.intervals import (
    bootstrap_interval,
    difference_interval,
    kendall_tau,
    r2,
    verdict,
)
from sane.errors import ConfigError, FormatError


@pytest.mark.slow
@pytest.mark.parametrize("models", [6, 15])
def test_probe_intervals_cover_at_the_sizes_the_reports_use(models):
    """Predictions p = x of y = x + e (x and e standard normal per model, 10 nearly equal
    checkpoints per model): the population R² of p is 1 - E(e²)/Var(y) = 0.5, and Kendall's
    τ of a bivariate normal with correlation ρ = 1/√2 is (2/π)·arcsin(ρ) = 0.5. Over 200
    simulated test splits of 6 and of 15 models (the reports' sizes), the 95 % intervals
    hold those values at least 94 % of the time (a plain percentile interval: 0.86 at 6
    models)."""
    generator = np.random.default_rng(0)
    hits = {"r2": 0, "tau": 0}
    runs, per_model = 200, 10
    groups = np.repeat([f"m{i}" for i in range(models)], per_model)
    for run in range(runs):
        x = np.repeat(generator.normal(size=models), per_model)
        e = np.repeat(generator.normal(size=models), per_model)
        y = x + e + 1e-3 * generator.normal(size=models * per_model)
        for name, metric, truth in (("r2", r2, 0.5), ("tau", kendall_tau, 0.5)):
            low, high = bootstrap_interval(y, x, groups, metric, resamples=300, seed=run)
            hits[name] += low <= truth <= high
    assert 0.94 <= hits["r2"] / runs <= 1.0
    assert 0.94 <= hits["tau"] / runs <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("prompts", [5, 10])
def test_difference_intervals_cover_at_the_sizes_the_reports_use(prompts):
    """Two methods' models grouped by prompt (prompt quality varies; each method keeps 10
    models spread over the prompts at random), the first better by 0.01 on average: over 200
    simulations the 95 % interval of the difference of means holds 0.01 at least 94 % of
    the time."""
    generator = np.random.default_rng(1)
    hits, runs = 0, 200
    for run in range(runs):
        quality = generator.normal(0, 0.03, prompts)
        sides = []
        for shift in (0.01, 0.0):
            counts = generator.multinomial(10, np.ones(prompts) / prompts)
            groups = np.repeat(np.arange(prompts), counts)
            sides.append((quality[groups] + shift + generator.normal(0, 0.01, len(groups)),
                          groups))
        low, high = difference_interval(*sides[0], *sides[1], resamples=300, seed=run)
        hits += low <= 0.01 <= high
    assert 0.94 <= hits / runs <= 1.0


def test_a_difference_interval_says_beat_level_or_lose():
    generator = np.random.default_rng(2)
    groups = np.repeat(np.arange(8), 3)
    base = generator.normal(0.8, 0.01, 24)
    assert verdict(difference_interval(base + 0.05, groups, base, groups)) == "beat"
    assert verdict(difference_interval(base - 0.05, groups, base, groups)) == "lose to"
    noise = generator.normal(0, 0.01, 24)
    assert verdict(difference_interval(base + noise, groups, base, groups)) == "level with"
    low, high = difference_interval(base + 0.05, groups, base, groups)
    assert low <= 0.05 <= high
    assert np.isnan(difference_interval([1.0, 2.0], [0, 1], [1.0, 2.0], [0, 1])[0])
    assert verdict((float("nan"), float("nan"))) == "level with"
    with pytest.raises(FormatError, match="must be \\[n\\] alike"):
        difference_interval([1.0], [0, 1], [1.0], [0])


def test_resampling_is_by_model_so_duplicated_checkpoints_change_nothing():
    generator = np.random.default_rng(1)
    y, p = generator.normal(size=30), generator.normal(size=30)
    models = [f"m{i}" for i in range(30)]
    once = bootstrap_interval(y, p, models, r2, resamples=200, seed=3)
    thrice = bootstrap_interval(np.repeat(y, 3), np.repeat(p, 3), np.repeat(models, 3), r2,
                                resamples=200, seed=3)
    assert once == pytest.approx(thrice)
    with pytest.raises(FormatError, match="must be \\[n\\] alike"):
        bootstrap_interval(y, p[:5], models, r2)
    with pytest.raises(ConfigError, match="resamples >= 1"):
        bootstrap_interval(y, p, models, r2, resamples=0)
    assert np.isnan(r2(np.ones(4), np.arange(4.0)))
    assert kendall_tau(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)
