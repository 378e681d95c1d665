"""``sane embed``: embed checkpoints from anywhere with a pretrained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from sane.commands import add_compute_options
from sane.settings import given


def register(subparsers: argparse._SubParsersAction) -> None:
    embed = subparsers.add_parser(
        "embed", help="embed checkpoint files with a pretrained SANE",
        description="Align each checkpoint to the zoo's reference, tokenize it with the run's "
        "tokenizer, encode it whole (haloed) and average its token latents; writes one row "
        "per checkpoint. Needs only the run directory, not its zoo or token store.",
    )
    embed.add_argument("run", type=Path, help="pretraining run directory (from `sane pretrain`)")
    embed.add_argument("checkpoints", nargs="+", type=Path,
                       help="state dicts: .safetensors, or .pt/.pth read with weights_only")
    embed.add_argument("--out", required=True, type=Path,
                       help="output .npy file [N, d_z]; beside it FILE.ood.json (distance to "
                       "the training zoo and out-of-distribution flag per checkpoint)")
    add_compute_options(embed)
    embed.set_defaults(handler=_embed)


def _embed(args: argparse.Namespace) -> None:
    from sane import atomic
    from sane.downstream.embedding import embed_checkpoints
    from sane.downstream.ood import OODReference

    embeddings = embed_checkpoints(args.run, args.checkpoints, **given(
        device=args.device, precision=args.precision))
    atomic.save_array(args.out, embeddings)
    print(f"{len(embeddings)} embeddings of {embeddings.shape[1]} dimensions: {args.out}")
    reference = OODReference.load(args.run)
    if reference is None:
        print(f"{args.run} holds no out-of-distribution reference (ood.json): no flags")
        return
    flags = [{"checkpoint": str(c), **f}
             for c, f in zip(args.checkpoints, reference.flags(embeddings))]
    atomic.write_json(args.out.with_suffix(".ood.json"),
                      {"threshold": reference.threshold, "checkpoints": flags})
    for flag in flags:
        if flag["ood"]:
            print(f"out of distribution: {flag['checkpoint']} (distance {flag['distance']:.4f} "
                  f"> {reference.threshold:.4f})")
