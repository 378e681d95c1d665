"""Which probe defaults win on the validation split: feature sets (SANE, SANE+std, W,
sW-layer) and the number of permutations a SANE embedding is averaged over, each over
several pretraining seeds (mean ± sd). The test split is not looked at: the defaults are
chosen here, and reports give test figures once, for the defaults.

The runs are ordinary ``sane pretrain`` runs of one store that differ only in ``--seed``,
with the precision the first was trained in, e.g. on the ``fmnist-seed`` reproduction::

    sane reproduce --scale fmnist-seed                      # runs/reproduce-fmnist-seed/sane
    for s in 1 2; do sane pretrain runs/reproduce-fmnist-seed/store --epochs 100 \\
        --batch-size 32 --seed $s --precision bf16 --out runs/fmnist-seed-sane-$s; done
    python benchmarks/bench_probe_defaults.py runs/reproduce-fmnist-seed/sane \\
        runs/fmnist-seed-sane-1 runs/fmnist-seed-sane-2 --out runs/probe-defaults

Prints, per property, the validation R² of every (feature set, permutations) pair as mean ±
sd over the runs, and the pair with the highest mean.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sane import markdown
from sane.stages.probe import PROPERTIES, predict_properties

FEATURES = ("W", "sW-layer", "SANE", "SANE+std")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pretraining runs of one store")
    parser.add_argument("--out", required=True, type=Path, help="where the probes are written")
    parser.add_argument("--permutations", default="0,16",
                        help="permutation counts compared (default 0,16)")
    args = parser.parse_args()
    counts = [int(k) for k in args.permutations.split(",")]
    scores: dict[tuple[str, str, int], list[float]] = {}
    for i, run in enumerate(args.runs):
        for k in counts:
            result = predict_properties(run, args.out / f"run{i}-k{k}", features=FEATURES,
                                        permutations=k, progress=False)
            for row in result.rows:
                # the weight baselines do not depend on the permutations: counted once
                if row.features.startswith("SANE") or k == counts[0]:
                    scores.setdefault((row.property, row.features, k), []).append(row.r2_val)
    print(f"Validation R², mean ± sd over {len(args.runs)} pretraining runs "
          f"({', '.join(str(r) for r in args.runs)}):\n")
    for prop in PROPERTIES:
        rows = [[f"{name}" + (f", K={k}" if name.startswith("SANE") else ""),
                 f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}"]
                for (p, name, k), v in scores.items() if p == prop]
        best = max(((name, k) for (p, name, k) in scores if p == prop),
                   key=lambda key: np.mean(scores[(prop, key[0], key[1])]))
        print(f"## {prop}\n\n{markdown.table(['features', 'validation R²'], rows)}\n\n"
              f"highest on validation: {best[0]}" + (f", K={best[1]}"
                                                      if best[0].startswith('SANE') else "")
              + "\n")


if __name__ == "__main__":
    main()
