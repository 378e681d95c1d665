"""Time weight matching of a ResNet-18 pair and the alignment of a 100-model CNN-s zoo.

    .venv/bin/python benchmarks/bench_weight_matching.py [--runs 5] [--models 100] [--threads N]

The ResNet-18 pair is two independently initialized, untrained models (Kaiming-normal init,
CIFAR stem, 10 classes); the spec is derived once, outside the timing. The zoo is built on the
fly in a temporary directory: ``--models`` CNN-s models (Kaiming-uniform init, untrained) with
two stored epochs each. Its alignment is timed end to end (``align_zoo``: manifest, spec,
reference choice, loading the checkpoints, matching) and for the matching alone on preloaded
checkpoints. Each figure is the median of ``--runs`` runs after one warm-up run. ``--threads``
sets torch's intra-op threads (default: torch's choice); on a machine busy with other jobs one
thread can be faster than two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sane.weights import align_zoo, distance, permutation_spec, weight_matching
from sane.weights.align import choose_reference
from sane.weights.permutations import apply_permutation
from sane.zoo.architectures import ArchConfig, build_model
from sane.zoo.storage import ModelEntry, Zoo

RESNET_TARGET_S = 1.5
ZOO_TARGET_S = 1.0


def median_time(fn: Callable[[], object], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_resnet18(runs: int) -> None:
    config = ArchConfig(name="resnet18", in_channels=3, init="kaiming_normal")
    a, b = (build_model(config, seed=s).state_dict() for s in (0, 1))
    start = time.perf_counter()
    spec = permutation_spec(build_model(config, seed=0))
    spec_s = time.perf_counter() - start
    seconds = median_time(lambda: weight_matching(spec, a, b), runs)
    aligned = apply_permutation(b, spec, weight_matching(spec, a, b))
    print(f"ResNet-18 pair (random init, {len(spec.sizes)} permutations): "
          f"{seconds:.3f} s (target <= {RESNET_TARGET_S} s); spec derivation {spec_s:.3f} s; "
          f"distance {distance(a, b):.2f} -> {distance(a, aligned):.2f}")


def build_zoo(path: Path, n_models: int) -> Zoo:
    config = ArchConfig(init="kaiming_uniform")
    ids = [f"model_{i:03d}" for i in range(n_models)]
    zoo = Zoo.create(path, [ModelEntry(i, seed=s, architecture=config) for s, i in enumerate(ids)],
                     dataset={"name": "mnist"})
    for s, model_id in enumerate(ids):
        for epoch in range(2):
            state = build_model(config, seed=1000 * s + epoch).state_dict()
            zoo.write_epoch(model_id, epoch, state, {"test_acc": 0.5})
    return zoo


def bench_zoo(n_models: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        zoo = build_zoo(Path(tmp) / "zoo", n_models)
        total = median_time(lambda: align_zoo(zoo, progress=False), runs)
        spec = permutation_spec(build_model(zoo.models[0].architecture, seed=0))
        reference = choose_reference(zoo)
        states = {m.id: zoo.load_checkpoint(m.id, 1) for m in zoo.models}

        def match_all() -> None:
            for model_id, state in states.items():
                if model_id != reference:
                    weight_matching(spec, states[reference], state)

        matching = median_time(match_all, runs)
    print(f"CNN-s zoo of {n_models} models: align_zoo {total:.3f} s end to end (target < "
          f"{ZOO_TARGET_S} s); matching alone on preloaded checkpoints {matching:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f} (other jobs on this machine slow the figures)")
    bench_resnet18(args.runs)
    bench_zoo(args.models, args.runs)


if __name__ == "__main__":
    main()
