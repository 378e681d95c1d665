"""``sane finetune``: fine-tune sampled models against random initializations and prompts."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    finetune = subparsers.add_parser(
        "finetune", help="fine-tune sampled models against random inits and the prompts",
        description="Train the models of a `sane sample` output, as many randomly initialized "
        "models and the prompt models the same way on the target's training split, and report "
        "validation accuracy after every epoch.",
    )
    finetune.add_argument("samples", type=Path, help="output directory of `sane sample`")
    finetune.add_argument("--epochs", type=int, default=5)
    finetune.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    finetune.add_argument("--batch-size", type=int, default=32)
    finetune.add_argument("--seed", type=int, default=0, help="data order and random inits")
    finetune.set_defaults(handler=_finetune)


def _finetune(args: argparse.Namespace) -> None:
    from sane.downstream.finetuning import finetune_samples

    finetune_samples(args.samples, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                     seed=args.seed)
    print((args.samples / "finetune.md").read_text().rstrip())
