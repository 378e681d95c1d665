"""``sane prepare``: tokenize a zoo once into a memory-mapped token store."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    del subparsers  # `sane prepare` is added with the token store.
