"""``sane demo``: the main job end to end on the embedded digits data."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="train a small zoo on the embedded digits data and prepare a token store",
        description="Train 8 CNN-s on scikit-learn's digits, summarize the zoo, align and "
        "tokenize it into a token store, draw augmented windows. Resumes if interrupted.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> None:
    from sane.demo import run_demo

    run_demo(args.out)
