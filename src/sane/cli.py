"""The ``sane`` command.

Each stage contributes its subcommands through a module of :mod:`sane.commands` with a
``register(subparsers)`` function; heavy imports (torch, scipy) happen inside the handlers so
that ``sane --help`` stays fast. A handler returns an exit status (``None`` means 0). A
:class:`~sane.errors.SaneError` is printed as one line, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sane import __version__
from sane.errors import SaneError

COMMAND_MODULES = (
    "sane.commands.data",
    "sane.commands.zoo",
    "sane.commands.prepare",
    "sane.commands.pretrain",
    "sane.commands.probe",
    "sane.commands.embed",
    "sane.commands.sample",
    "sane.commands.finetune",
    "sane.commands.analyze",
    "sane.commands.demo",
    "sane.commands.reproduce",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sane",
        description="Weight-space learning with SANE: build model zoos, tokenize weights, "
        "learn embeddings, predict properties and sample new models.",
    )
    parser.add_argument("--version", action="version", version=f"sane {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 0
    try:
        status = args.handler(args)
    except SaneError as error:
        print(f"sane: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sane: interrupted; finished work is on disk, run the same command to resume",
              file=sys.stderr)
        return 130
    return 0 if status is None else int(status)
