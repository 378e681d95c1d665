"""Bootstrap intervals over models, and out-of-distribution flags: known answers."""

from __future__ import annotations

import numpy as np
import pytest

from sane.downstream.intervals import bootstrap_interval, kendall_tau, r2
from sane.errors import ConfigError, FormatError


@pytest.mark.slow
def test_intervals_cover_the_population_value_about_95_percent_of_the_time():
    """Predictions p = x of y = x + e (x and e standard normal per model, 10 nearly equal
    checkpoints per model): the population R² of p is 1 - E(e²)/Var(y) = 0.5, and Kendall's
    τ of a bivariate normal with correlation ρ = 1/√2 is (2/π)·arcsin(ρ) = 0.5. Over 200
    simulated test splits of 40 models, the 95 % intervals hold those values about 95 % of
    the time."""
    generator = np.random.default_rng(0)
    hits = {"r2": 0, "tau": 0}
    runs, models, per_model = 200, 40, 10
    groups = np.repeat([f"m{i}" for i in range(models)], per_model)
    for run in range(runs):
        x = np.repeat(generator.normal(size=models), per_model)
        e = np.repeat(generator.normal(size=models), per_model)
        y = x + e + 1e-3 * generator.normal(size=models * per_model)
        for name, metric, truth in (("r2", r2, 0.5), ("tau", kendall_tau, 0.5)):
            low, high = bootstrap_interval(y, x, groups, metric, resamples=300, seed=run)
            hits[name] += low <= truth <= high
    assert 0.88 <= hits["r2"] / runs <= 0.99
    assert 0.88 <= hits["tau"] / runs <= 0.99


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
