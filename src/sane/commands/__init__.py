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
                        "CPU (bf16 changes the results, for little speed there)")


def add_permutations_option(parser: argparse.ArgumentParser, default: str) -> None:
    """``--permutations K`` of the commands that embed models; ``default`` says what it is."""
    parser.add_argument("--permutations", type=int, metavar="K",
                        help="average each embedding over the model as aligned and K random "
                        f"permutations of it (0: the aligned model only; default {default})")
