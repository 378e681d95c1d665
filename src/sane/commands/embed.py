"""``sane embed``: embed checkpoints from anywhere with a pretrained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from sane.commands import add_compute_options, add_permutations_option
from sane.settings import given


def register(subparsers: argparse._SubParsersAction) -> None:
    embed = subparsers.add_parser(
        "embed", help="embed checkpoint files with a pretrained SANE",
        description="Align each checkpoint to the zoo's reference, tokenize it with the run's "
        "tokenizer, encode it and random permutations of it whole and average their mean "
        "token latents; writes one row per checkpoint. Needs only the run directory, "
        "not its zoo or token store.",
    )
    embed.add_argument("run", type=Path, help="pretraining run directory (from `sane pretrain`)")
    embed.add_argument("checkpoints", nargs="+", type=Path,
                       help="state dicts: .safetensors, or .pt/.pth read with weights_only")
    embed.add_argument("--out", required=True, type=Path,
                       help="output .npy file [N, d_z]; beside it FILE.ood.json (distances to "
                       "the training zoo and out-of-distribution flag per checkpoint)")
    add_compute_options(embed)
    add_permutations_option(embed, "that of the run's out-of-distribution reference, 16 for "
                            "runs of this sane")
    embed.set_defaults(handler=_embed)


def _embed(args: argparse.Namespace) -> None:
    from sane import atomic
    from sane.downstream.features import PERMUTATIONS
    from sane.downstream.ood import OODReference
    from sane.pipeline import Pipeline
    from sane.stages.embed import ood_flags, read_fitting

    pipe = Pipeline.from_pretrained(args.run, **given(device=args.device,
                                                      precision=args.precision))
    reference = OODReference.load(args.run)  # a malformed reference fails before any work
    permutations = args.permutations
    if permutations is None:
        permutations = PERMUTATIONS if reference is None else reference.permutations
    states = read_fitting(pipe, args.checkpoints)
    embeddings = pipe.embed(states, permutations=permutations)
    atomic.save_array(args.out, embeddings)
    print(f"{len(embeddings)} embeddings of {embeddings.shape[1]} dimensions, each averaged "
          f"over {permutations} permutations: {args.out}")
    if reference is None:
        print(f"{args.run} holds no out-of-distribution reference (ood.json): no flags")
        return
    if reference.permutations != permutations:
        print(f"no out-of-distribution flags: the reference's embeddings average "
              f"{reference.permutations} permutations; embed with --permutations "
              f"{reference.permutations} to flag")
        return
    flags = [{"checkpoint": str(c), **f}
             for c, f in zip(args.checkpoints, ood_flags(reference, pipe, states, embeddings))]
    atomic.write_json(args.out.with_suffix(".ood.json"),
                      {**reference.summary(), "checkpoints": flags})
    for flag in flags:
        if flag["ood"]:
            beyond = ", ".join(f"{s} {flag['distances'][s]:.4f} > {reference.thresholds[s]:.4f}"
                               for s in flag["spaces"])
            print(f"out of distribution: {flag['checkpoint']} ({beyond})")
