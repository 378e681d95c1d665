"""``sane embed``: embed checkpoints from anywhere with a pretrained run."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    embed.add_argument("--out", required=True, type=Path, help="output .npy file [N, d_z]")
    embed.set_defaults(handler=_embed)


def _embed(args: argparse.Namespace) -> None:
    from sane import atomic
    from sane.downstream.embedding import embed_checkpoints

    embeddings = embed_checkpoints(args.run, args.checkpoints)
    atomic.save_array(args.out, embeddings)
    print(f"{len(embeddings)} embeddings of {embeddings.shape[1]} dimensions: {args.out}")
