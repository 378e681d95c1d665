"""Weight matching: exact recovery of a known permutation, optimality against brute force,
seeded determinism, monotone distance, idempotence, and bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sane.errors import ConfigError, FormatError
from sane.weights import (
    apply_permutation,
    distance,
    matching,
    permutation_spec,
    random_permutation,
    weight_matching,
)
from sane.weights.permutations import identity_permutation
from sane.zoo.architectures import ArchConfig, build_model

CONFIGS = {
    "cnn_s": ArchConfig(dropout=0.5, init="kaiming_normal"),
    "cnn_s_uniform": ArchConfig(),
    "cnn_l": ArchConfig(name="cnn_l", in_channels=3, input_size=32, init="kaiming_normal"),
    "mlp": ArchConfig(name="mlp", init="kaiming_normal"),
    "cnn1d": ArchConfig(name="cnn1d", input_size=40, init="kaiming_normal"),
}


def pair(name: str, dtype: torch.dtype = torch.float32):
    """The spec and two independently initialized state dicts of ``CONFIGS[name]``."""
    config = CONFIGS[name]
    a, b = (build_model(config, seed=s).state_dict() for s in (0, 1))
    cast = ({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
            for sd in (a, b))
    return permutation_spec(build_model(config, seed=0)), *cast


def same_perms(p: dict, q: dict) -> bool:
    return p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_recovers_a_known_permutation_exactly(name: str) -> None:
    spec, a, _ = pair(name)
    hidden = random_permutation(spec, torch.Generator().manual_seed(3))
    shuffled = apply_permutation(a, spec, hidden)
    assert distance(a, shuffled) > 0
    recovered = apply_permutation(shuffled, spec, weight_matching(spec, a, shuffled, seed=7))
    assert all(torch.equal(recovered[k], a[k]) for k in a)
    assert distance(a, recovered) == 0


def test_recovers_in_float64() -> None:
    spec, a, _ = pair("cnn_l", torch.float64)
    hidden = random_permutation(spec, torch.Generator().manual_seed(0))
    shuffled = apply_permutation(a, spec, hidden)
    recovered = apply_permutation(shuffled, spec, weight_matching(spec, a, shuffled))
    assert all(torch.equal(recovered[k], a[k]) for k in a)


@pytest.mark.slow
def test_recovers_a_permuted_resnet18() -> None:
    config = ArchConfig(name="resnet18", in_channels=3, init="kaiming_normal")
    model = build_model(config, seed=0)
    spec, a = permutation_spec(model), model.state_dict()
    hidden = random_permutation(spec, torch.Generator().manual_seed(1))
    shuffled = apply_permutation(a, spec, hidden)
    recovered = apply_permutation(shuffled, spec, weight_matching(spec, a, shuffled))
    assert distance(a, recovered) == 0


def test_single_group_matches_brute_force() -> None:
    # With one permutation the assignment problem is solved exactly: no permutation is closer.
    config = ArchConfig(name="mlp", input_size=2, hidden=(5,), num_classes=3, init="normal")
    spec = permutation_spec(build_model(config, seed=0))
    (name,) = spec.sizes
    for seed in range(3):
        a, b = (build_model(config, seed=10 * seed + s).state_dict() for s in (1, 2))
        found = distance(a, apply_permutation(b, spec, weight_matching(spec, a, b)))
        best = min(distance(a, apply_permutation(b, spec, {name: torch.tensor(p)}))
                   for p in itertools.permutations(range(spec.sizes[name])))
        assert found == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("name", ["cnn_s", "cnn_l", "cnn1d"])
def test_distance_decreases_at_every_accepted_step(name: str) -> None:
    spec, a, b = pair(name)
    trace: list = []
    perms = weight_matching(spec, a, b, trace=trace)
    distances = [distance(a, b, spec)]
    distances += [distance(a, apply_permutation(b, spec, p), spec) for p in trace]
    assert len(trace) >= 1 and same_perms(trace[-1], perms)
    assert all(later < earlier for earlier, later in itertools.pairwise(distances))
    # non-permuted entries (the last layer's bias) add the same amount before and after
    assert distance(a, apply_permutation(b, spec, perms)) < distance(a, b)


def test_deterministic_for_a_seed_and_independent_of_the_global_rng() -> None:
    # the public reference code drew the visiting order from the unseeded global RNG
    spec, a, b = pair("cnn_l")
    traces: tuple[list, list] = ([], [])
    torch.manual_seed(1)
    first = weight_matching(spec, a, b, seed=4, trace=traces[0])
    torch.manual_seed(2)
    second = weight_matching(spec, a, b, seed=4, trace=traces[1])
    assert same_perms(first, second)
    assert len(traces[0]) == len(traces[1])
    assert all(same_perms(p, q) for p, q in zip(*traces))


def test_the_seed_orders_the_visits() -> None:
    spec, a, b = pair("cnn_l")
    traces = {seed: [] for seed in (0, 1)}
    for seed, trace in traces.items():
        weight_matching(spec, a, b, seed=seed, trace=trace)

    def updated(trace: list) -> list[str]:
        steps = [identity_permutation(spec), *trace]
        return [next(n for n in spec.sizes if not torch.equal(p[n], q[n]))
                for p, q in itertools.pairwise(steps)]

    assert updated(traces[0]) != updated(traces[1])


@pytest.mark.parametrize("seed", [0, 3])
def test_idempotent_on_an_aligned_model(seed: int) -> None:
    spec, a, b = pair("cnn_s")
    aligned = apply_permutation(b, spec, weight_matching(spec, a, b, seed=0))
    assert same_perms(weight_matching(spec, a, aligned, seed=seed), identity_permutation(spec))


def test_max_iter_bounds_the_passes() -> None:
    spec, a, b = pair("cnn_l")
    assert same_perms(weight_matching(spec, a, b, max_iter=0), identity_permutation(spec))
    one_pass: list = []
    weight_matching(spec, a, b, max_iter=1, trace=one_pass)
    assert 1 <= len(one_pass) <= len(spec.sizes)  # each group is solved at most once per pass
    with pytest.raises(ConfigError, match="max_iter"):
        weight_matching(spec, a, b, max_iter=-1)


def test_distance_known_values() -> None:
    a = {"w": torch.zeros(2, 3), "n": torch.tensor(5)}
    b = {"w": torch.ones(2, 3), "n": torch.tensor(7)}
    assert distance(a, a) == 0
    assert distance(a, b) == pytest.approx(math.sqrt(6))
    with pytest.raises(FormatError, match="differ in keys"):
        distance(a, {"w": b["w"]})


def test_bad_state_dicts_raise() -> None:
    spec, a, b = pair("cnn_s")
    key = "module_list.4.weight"
    with pytest.raises(FormatError, match="missing keys"):
        weight_matching(spec, a, {k: v for k, v in b.items() if k != key})
    with pytest.raises(FormatError, match=f"model state dict: '{key}' has shape"):
        weight_matching(spec, a, {**b, key: b[key][:, :, 0]})
    with pytest.raises(FormatError, match="differs from the reference"):
        weight_matching(spec, a, {**b, key: torch.zeros(6, 16, 5, 5)})
    nan = b[key].clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(FormatError, match=f"model '{key}' has non-finite values"):
        weight_matching(spec, a, {**b, key: nan})


def test_only_gains_above_the_tolerance_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, a, _ = pair("cnn_l")
    hidden = random_permutation(spec, torch.Generator().manual_seed(0))
    shuffled = apply_permutation(a, spec, hidden)
    monkeypatch.setattr(matching, "RELATIVE_TOLERANCE", 1.0)  # above any possible gain
    assert same_perms(weight_matching(spec, a, shuffled), identity_permutation(spec))


def test_exact_gain_is_the_objective_difference() -> None:
    generator = torch.Generator().manual_seed(0)
    ref = [torch.randn(5, 7, generator=generator), torch.randn(5, 3, generator=generator)]
    rows = [torch.randn(5, 7, generator=generator), torch.randn(5, 3, generator=generator)]
    sigma = torch.tensor([2, 1, 0, 4, 3])
    moved = torch.tensor([0, 2, 3, 4])

    def objective(order: torch.Tensor) -> float:
        return sum(float((r.double() * m[order].double()).sum()) for r, m in zip(ref, rows))

    gain = matching._exact_gain(ref, rows, sigma, moved)
    assert gain == pytest.approx(objective(sigma) - objective(torch.arange(5)), rel=1e-12)
