"""Paired differences between the feature sets of one ``sane probe`` output.

For each property and each pair ``A-B`` of ``--pairs``, the difference of test R² and of
Kendall τ between A's and B's predictions, with a 95 % percentile interval over bootstrap
resamples of the test *models* (a drawn model brings all its checkpoints, as in
:mod:`sane.downstream.intervals`); both sets are scored on the same resample, so the
interval is that of the difference, narrower than two separate intervals suggest.

Measured for docs/results.md (after ``sane probe runs/reproduce-fmnist-seed/sane --out
runs/probe-fmnist-seed-nfn --features W,sW-layer,SANE,SANE+std,NFN``, the same for
``quick``)::

    .venv/bin/python benchmarks/bench_probe_differences.py runs/probe-fmnist-seed-nfn \\
        --pairs SANE+std-NFN,SANE-NFN,sW-layer-NFN,NFN-W
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sane.downstream.intervals import METRICS
from sane.weights.store import TokenStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probes", type=Path, help="a `sane probe` output directory")
    parser.add_argument("--pairs", required=True,
                        help="comma-separated A-B pairs of feature sets (split at the last -)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    saved = json.loads((args.probes / "probes.json").read_text())
    store = TokenStore.open(saved["store"])
    cell = {(r["property"], r["features"]): r for r in saved["results"]}
    print(f"{'property':9} {'pair':>16}  " + "  ".join(
        f"{m} difference [95 %]" for m in METRICS))
    for prop in saved["properties"]:
        for pair in args.pairs.split(","):
            a, b = pair.rsplit("-", 1)
            first, second = cell[prop, a], cell[prop, b]
            models = [store.rows[r][0] for r in first["test_rows"]]
            draws = _model_resamples(models, args.resamples, args.seed)
            truth = np.array(first["test_truth"])
            pa, pb = np.array(first["test_predicted"]), np.array(second["test_predicted"])
            cells = []
            for name, metric in METRICS.items():
                spread = [metric(truth[d], pa[d]) - metric(truth[d], pb[d]) for d in draws]
                low, high = np.nanpercentile(spread, [2.5, 97.5])
                cells.append(f"{first[f'{name}_test'] - second[f'{name}_test']:+.3f} "
                             f"[{low:+.2f}, {high:+.2f}]")
            print(f"{prop:9} {pair:>16}  " + "  ".join(cells))


def _model_resamples(models: list[str], count: int, seed: int) -> list[np.ndarray]:
    """``count`` bootstrap draws of the test rows: models drawn with replacement, each with
    all its rows."""
    names, index = np.unique(np.asarray(models), return_inverse=True)
    rows = [np.flatnonzero(index == g) for g in range(len(names))]
    generator = np.random.default_rng(seed)
    return [np.concatenate([rows[g] for g in generator.integers(0, len(rows), len(rows))])
            for _ in range(count)]


if __name__ == "__main__":
    main()
