"""``sane analyze``: SANE's layer-wise latent spread against WeightWatcher-style metrics."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    analyze = subparsers.add_parser(
        "analyze", help="per-layer latent spread vs spectral (WeightWatcher) metrics",
        description="For every checkpoint of the store: the spread of each layer's token "
        "latents (SANE Eq. 8), and the layer's log spectral norm, power-law alpha and "
        "weighted alpha; their layer profiles and the correlation of their layer averages "
        "with test accuracy.",
    )
    analyze.add_argument("run", type=Path, help="pretraining run directory")
    analyze.add_argument("--out", required=True, type=Path, help="output directory")
    analyze.add_argument("--store", type=Path,
                         help="token store (default: the one the run was trained on)")
    analyze.set_defaults(handler=_analyze)


def _analyze(args: argparse.Namespace) -> None:
    from sane.stages.analyze import analyze

    analyze(args.run, args.out, store=args.store)
    print((args.out / "analysis.md").read_text().rstrip())
    print(f"per layer: {args.out / 'analysis.json'}, figure: {args.out / 'analysis.png'}")
