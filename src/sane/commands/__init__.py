"""The subcommands of ``sane``, one module per stage, each with ``register(subparsers)``.

These modules import only the standard library at module level (torch and the stage packages
are imported inside the handlers), so that ``sane --help`` answers at once.
"""

import argparse


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision`` of the commands that run a pretrained SANE."""
    parser.add_argument("--device", help="torch device of the SANE, e.g. cpu (default) or cuda")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                        help="bf16 autocast or fp32; auto (default): bf16 on CUDA, fp32 on "
                        "CPU")
