"""``sane pretrain``: train a SANE autoencoder on a token store."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    pretrain = subparsers.add_parser(
        "pretrain", help="pretrain a SANE autoencoder on a token store",
        description="Pretrain SANE on the training split of a token store (masked "
        "reconstruction + NT-Xent of an aligned and a permuted view), validating on the "
        "validation split after every epoch. Rerunning the same command resumes an "
        "interrupted run from its last finished epoch. Under `torchrun --nproc-per-node N -m "
        "sane pretrain ...` the N processes share every batch (data parallel; gloo on CPU, "
        "NCCL on CUDA).",
    )
    pretrain.add_argument("store", type=Path, help="token store (from `sane prepare`)")
    pretrain.add_argument("--out", required=True, type=Path, help="run directory")
    pretrain.add_argument("--config", type=Path,
                          help="TOML file: top-level pretraining keys, a [model] table")
    pretrain.add_argument("--preset", help="model shape: cpu (default), tiny, small, cnn, resnet")
    pretrain.add_argument("--epochs", type=int, help="epochs (default 50)")
    pretrain.add_argument("--batch-size", type=int, help="windows per step (default 32)")
    pretrain.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    pretrain.add_argument("--seed", type=int, help="seed of initialization and windows (default 0)")
    pretrain.add_argument("--latent-noise", type=float,
                          help="train the decoder on latents noised by up to this many latent "
                               "spreads (default 0: plain reconstruction)")
    pretrain.add_argument("--behaviour", type=float,
                          help="weight of the behavioural loss: whole decoded models against "
                               "their originals' outputs on training images (default 0: off)")
    pretrain.add_argument("--device", help="torch device, e.g. cpu (default) or cuda")
    pretrain.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                          help="bf16 autocast or fp32; auto (default): bf16 on CUDA; on a CPU "
                          "the faster of the two, timed on a few steps at the start (run.json "
                          "records it)")
    pretrain.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> None:
    from sane.stages.reference import fit_reference
    from sane.train import load_pretrain_config, pretrain
    from sane.train.distributed import environment_ranks

    config = load_pretrain_config(args.config, preset=args.preset, epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                  latent_noise=args.latent_noise, behaviour=args.behaviour,
                                  device=args.device,
                                  precision=args.precision)
    pretrain(args.store, args.out, config)
    if not environment_ranks().main:
        return
    fit_reference(args.out, store=args.store)  # what `sane embed` flags checkpoints against
    print((args.out / "report.md").read_text().rstrip().splitlines()[-1])
    print(f"model: {args.out} (sane.SANE.from_pretrained), report: {args.out / 'report.md'}")
