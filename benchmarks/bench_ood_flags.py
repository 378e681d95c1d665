"""How often the out-of-distribution flag fires, per zoo, epoch range and space.

The reference is the one ``sane probe RUN --out PROBES`` fits on its store's training split
(``PROBES/ood.json``); every checkpoint of each ``--zoo`` (optionally one split of it:
``DIR:test``) is embedded with the run's SANE and flagged as ``sane embed`` flags it
(:func:`sane.stages.embed.ood_flags`). Printed per zoo and epoch range: the share of
checkpoints flagged in any space, and in the SANE and sW-layer spaces alone.

Measured for docs/results.md (after ``sane reproduce --scale fmnist-seed --out
runs/reproduce-fmnist-seed``, ``sane reproduce --scale quick --out runs/reproduce-quick``,
``sane zoo train benchmarks/configs/digits-fmnist-recipe.toml --out runs/ood-digits-recipe``
and ``sane probe runs/reproduce-fmnist-seed/sane --out runs/ood-probes``)::

    .venv/bin/python benchmarks/bench_ood_flags.py --run runs/reproduce-fmnist-seed/sane \\
        --reference runs/ood-probes --zoo runs/reproduce-fmnist-seed/zoo:test \\
        --zoo runs/reproduce-fmnist-seed/zoo:val --zoo runs/ood-digits-recipe \\
        --zoo runs/reproduce-quick/zoo --epochs 0,1-5,6-10,11-20,21-40
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sane import Pipeline
from sane.downstream.ood import OODReference
from sane.stages.embed import ood_flags
from sane.zoo import Zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="pretraining run directory")
    parser.add_argument("--reference", required=True,
                        help="directory holding ood.json (a `sane probe` output)")
    parser.add_argument("--zoo", action="append", required=True,
                        help="zoo directory, optionally DIR:SPLIT; repeatable")
    parser.add_argument("--epochs", default="0,1-5,6-10",
                        help="comma-separated epoch ranges (default 0,1-5,6-10)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = Pipeline.from_pretrained(args.run)
    reference = OODReference.load(args.reference)
    if reference is None:
        raise SystemExit(f"{args.reference} holds no ood.json")
    ranges = [tuple(int(e) for e in (r.split("-") * 2)[:2]) for r in args.epochs.split(",")]
    print("thresholds", {s: round(t, 4) for s, t in reference.thresholds.items()})
    print("| zoo | epochs | checkpoints | flagged | SANE | sW-layer |")
    print("|---|---|---:|---:|---:|---:|")
    for spec in args.zoo:
        path, _, split = spec.partition(":")
        zoo = Zoo.open(path)
        ids = zoo.split[split] if split else [m.id for m in zoo.models]
        for low, high in ranges:
            keys = [(m, e) for m in ids for e in zoo.checkpoint_epochs(m) if low <= e <= high]
            if not keys:
                continue
            flags = []
            for start in range(0, len(keys), 50):
                states = [zoo.load_checkpoint(m, e) for m, e in keys[start:start + 50]]
                embeddings = pipe.embed(states, permutations=reference.permutations)
                flags += ood_flags(reference, pipe, states, embeddings)
            share = {s: np.mean([s in f["spaces"] for f in flags]) for s in reference.features}
            print(f"| {spec} | {low}-{high} | {len(flags)} | "
                  f"{np.mean([f['ood'] for f in flags]):.2f} | "
                  + " | ".join(f"{share.get(s, float('nan')):.2f}" for s in ("SANE", "sW-layer"))
                  + " |")


if __name__ == "__main__":
    main()
