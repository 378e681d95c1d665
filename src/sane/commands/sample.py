"""``sane sample``: sample new models for a task, and an architecture, from a pretrained
SANE."""

from __future__ import annotations

import argparse
from pathlib import Path

from sane.commands import add_compute_options
from sane.settings import given


def register(subparsers: argparse._SubParsersAction) -> None:
    sample = subparsers.add_parser(
        "sample", help="sample new models from a pretrained SANE and keep the best",
        description="Embed a few prompt models (the first training-split models of the store, "
        "or with --prompts-from the models of a zoo of another architecture), "
        "draw latent sequences from a KDE around them (each draw one prompt's latents plus "
        "Gaussian noise; or from a Gaussian prior), one architecture of prompts at a time, "
        "decode them into weights, condition batch norm on the zoo's training images, select "
        "them by validation accuracy and keep the best; with --rounds > 1 the kept latents "
        "become the next prompts. Reports test accuracy of the kept samples, the prompts and "
        "copy baselines of the same budget (prompts plus noise at the same distances, prompt "
        "averages), with the difference to the strongest and its 95 % interval.",
    )
    sample.add_argument("run", type=Path, help="pretraining run directory (from `sane pretrain`)")
    sample.add_argument("--out", required=True, type=Path, help="output directory")
    sample.add_argument("--store", type=Path,
                        help="token store (default: the one the run was trained on)")
    sample.add_argument("--prompts-from", type=Path, metavar="ZOO",
                        help="take the prompts from this zoo (`sane zoo train`): models of a "
                        "target architecture, e.g. wider or deeper, trained briefly on their "
                        "task; samples have that architecture and are scored on that task")
    sample.add_argument("--prompts", type=int, help="prompt models (default 5)")
    sample.add_argument("--prompt-epoch", type=int,
                        help="epoch of the prompts (default: each model's last stored epoch)")
    sample.add_argument("--samples", type=int, help="models drawn per round (default 50)")
    sample.add_argument("--keep", type=int, help="best models kept per round (default 10)")
    sample.add_argument("--rounds", type=int, help="bootstrapping rounds (default 1)")
    sample.add_argument("--bandwidth", type=_bandwidths, metavar="B[,B...]",
                        help="KDE bandwidth, relative to the prompts' latent spread (default "
                        "0.1: noise of a tenth of the spread of each latent dimension); "
                        "several, comma-separated, sweep them into OUT/bandwidth-B/ and write "
                        "the novelty-quality frontier (OUT/frontier.md, frontier.png)")
    sample.add_argument("--absolute-bandwidth", dest="relative", action="store_false",
                        default=None,
                        help="--bandwidth is the noise standard deviation itself")
    sample.add_argument("--best-prompts", action="store_true", default=None,
                        help="take the most accurate models as prompts, not the first")
    sample.add_argument("--prompt-split", choices=("train", "val", "test"),
                        help="take the prompts from the store's models of this split (default "
                        "train; val or test: models held out from pretraining)")
    sample.add_argument("--prior-std", type=float,
                        help="start from N(0, STD²) latents instead of prompts")
    sample.add_argument("--dataset",
                        help="score and condition on another dataset of the same input shape "
                        "and classes (transfer to a new task; default: the zoo's dataset)")
    sample.add_argument("--root", help="directory of --dataset's files")
    sample.add_argument("--seed", type=int, help="seed of the draws (default 0)")
    add_compute_options(sample)
    sample.set_defaults(handler=_sample)


def _bandwidths(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}"
                                         ) from None
    return values


def _sample(args: argparse.Namespace) -> None:
    from sane.downstream.sampling import SamplingConfig
    from sane.stages.frontier import sample_frontier
    from sane.stages.sample import sample_from_run

    bandwidths = args.bandwidth or [None]
    config = SamplingConfig(**given(samples=args.samples, keep=args.keep, rounds=args.rounds,
                                    bandwidth=bandwidths[0], relative=args.relative,
                                    prior_std=args.prior_std, seed=args.seed))
    options = given(
        store=args.store, prompts=args.prompts, prompt_epoch=args.prompt_epoch,
        best_prompts=args.best_prompts, dataset=args.dataset, root=args.root,
        prompt_split=args.prompt_split,
        prompts_from=args.prompts_from, device=args.device, precision=args.precision)
    if len(bandwidths) > 1:
        sample_frontier(args.run, args.out, bandwidths, config=config, **options)
        print((args.out / "frontier.md").read_text().rstrip())
        print(f"per bandwidth: {args.out}/bandwidth-*/, figure: {args.out / 'frontier.png'}")
        return
    sample_from_run(args.run, args.out, config=config, **options)
    print((args.out / "samples.md").read_text().rstrip())
    print(f"models: {args.out}/sample_*.safetensors, report: {args.out / 'samples.json'}")
