"""``sane demo``: the main job end to end on the embedded digits data (the ``demo`` scale of
``sane reproduce``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole pipeline on the embedded digits data, in about a minute",
        description="Train 34 CNN-s on scikit-learn's digits, align and tokenize them into a "
        "token store, pretrain a SANE, predict properties with linear probes against the W "
        "and s(W) baselines, and sample new models with memorization controls; writes "
        "OUT/report.md. The `demo` scale of `sane reproduce`. Resumes if interrupted.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> None:
    from sane.reproduce import SCALES, run_reproduction

    run_reproduction(args.out, SCALES["demo"])
