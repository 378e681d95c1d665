"""``sane demo``: the main job end to end on the embedded digits data."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    del subparsers  # added once a population can be trained.
