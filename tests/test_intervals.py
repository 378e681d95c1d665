"""Bootstrap intervals over models, and out-of-distribution flags: known answers."""

from __future__ import annotations

import numpy as np
import pytest

from sane.downstream.intervals import bootstrap_interval, kendall_tau, r2
from sane.downstream.ood import OODReference
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


def test_ood_threshold_is_the_percentile_of_distances_to_other_models():
    # Models on a line 1 apart, two checkpoints each at the same place: the nearest other
    # model is 1 away for every checkpoint, so the threshold is 1.
    embeddings = np.repeat(np.arange(10.0), 2)[:, None] * np.array([[1.0, 0.0]])
    models = np.repeat([f"m{i}" for i in range(10)], 2).tolist()
    reference = OODReference.fit(embeddings, models)
    assert reference.threshold == pytest.approx(1.0)
    flags = reference.flags(np.array([[4.5, 0.5], [4.0, 3.0], [20.0, 0.0]]))
    assert [f["ood"] for f in flags] == [False, True, True]
    assert flags[1]["distance"] == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="at least two models"):
        OODReference.fit(embeddings[:2], models[:2])
    with pytest.raises(FormatError, match=r"queries must be \[Q, 2\]"):
        reference.distances(np.zeros((1, 3)))


def test_an_ood_reference_round_trips(tmp_path):
    reference = OODReference.fit(np.eye(4), ["a", "b", "c", "d"], percentile=50.0)
    reference.save(tmp_path)
    loaded = OODReference.load(tmp_path)
    assert loaded.threshold == reference.threshold and loaded.models == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(loaded.embeddings, np.eye(4))
    assert OODReference.load(tmp_path / "none") is None
