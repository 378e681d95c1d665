"""``sane reproduce``: the paper's protocols end to end on a zoo generated here."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from sane.reproduce import SCALES

    reproduce = subparsers.add_parser(
        "reproduce", help="run the paper's protocols on a generated zoo and write a report",
        description="Train a zoo, align and tokenize it, pretrain SANE, predict properties "
        "against the W and s(W) baselines, sample models (KDE30, subsampling, bootstrapping, "
        "Gaussian prior) and fine-tune them against training from scratch and the prompts "
        "(SANE Table 3), with memorization controls, and run the layer analysis; writes "
        "OUT/report.md. Resumes if interrupted.",
    )
    reproduce.add_argument("--scale", choices=sorted(SCALES), default="quick",
                           help="demo: the `sane demo` run, a few minutes; quick: digits "
                           "hyperparameter zoo, minutes; fmnist-seed: "
                           "Fashion-MNIST seed zoo, Table 3's setting, about an hour; fmnist: "
                           "Fashion-MNIST hyperparameter zoo, about an hour")
    reproduce.add_argument("--out", type=Path,
                           help="output directory (default runs/reproduce-SCALE)")
    reproduce.set_defaults(handler=_reproduce)


def _reproduce(args: argparse.Namespace) -> None:
    from sane.reproduce import SCALES, run_reproduction

    run_reproduction(args.out or Path(f"runs/reproduce-{args.scale}"), SCALES[args.scale])
