"""``sane finetune``: fine-tune sampled models against random initializations and prompts."""

from __future__ import annotations

import argparse
from pathlib import Path

from sane.settings import given


def register(subparsers: argparse._SubParsersAction) -> None:
    finetune = subparsers.add_parser(
        "finetune", help="fine-tune sampled models against random inits and the prompts",
        description="Train the models of a `sane sample` output, as many randomly initialized "
        "models and the prompt models the same way on the target's training split, and report "
        "validation accuracy after every epoch.",
    )
    finetune.add_argument("samples", type=Path, help="output directory of `sane sample`")
    finetune.add_argument("--epochs", type=int, help="epochs (default 5)")
    finetune.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    finetune.add_argument("--batch-size", type=int, help="images per step (default 32)")
    finetune.add_argument("--seed", type=int, help="data order and random inits (default 0)")
    finetune.set_defaults(handler=_finetune)


def _finetune(args: argparse.Namespace) -> None:
    from sane.stages.finetune import finetune_samples

    finetune_samples(args.samples, **given(epochs=args.epochs, lr=args.lr,
                                           batch_size=args.batch_size, seed=args.seed))
    print((args.samples / "finetune.md").read_text().rstrip())
