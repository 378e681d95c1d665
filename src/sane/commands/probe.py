"""``sane probe``: predict model properties from SANE embeddings and weight baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from sane.commands import add_compute_options, add_permutations_option
from sane.settings import given


def register(subparsers: argparse._SubParsersAction) -> None:
    probe = subparsers.add_parser(
        "probe", help="predict accuracy, epoch and generalization gap with linear probes",
        description="Embed every checkpoint of a token store with a pretrained SANE (mean "
        "over tokens, averaged over random permutations of the model), compute the W "
        "and s(W) baselines, and fit one ridge probe per "
        "feature set and property on the training split, its strength chosen on the "
        "validation split. With NFN among the feature sets, also trains a "
        "permutation-invariant neural functional on the training split's checkpoints (needs "
        "`pip install 'sane[nfn]'`), its size and epochs chosen on the validation split. "
        "Prints and writes R² and Kendall τ with bootstrap intervals over "
        "test models, classification probes for the zoo's hyperparameters and "
        "out-of-distribution flags.",
    )
    probe.add_argument("run", type=Path, nargs="?",
                       help="pretraining run directory (from `sane pretrain`)")
    probe.add_argument("--out", required=True, type=Path, help="output directory")
    probe.add_argument("--store", type=Path,
                       help="token store (default: the one the run was trained on)")
    probe.add_argument("--features",
                       help="comma-separated feature sets: SANE, SANE+std, W, sW-layer, "
                       "sW-tensor-var, sW-tensor-std, NFN (default: SANE,SANE+std,W,sW-layer)")
    probe.add_argument("--properties",
                       help="comma-separated properties (default: test_acc,epoch,ggap)")
    probe.add_argument("--predict", type=Path, metavar="ZOO",
                       help="also predict the last checkpoint of every model of this zoo, "
                       "each flagged when it lies outside the training zoo")
    add_compute_options(probe)
    add_permutations_option(probe, "16")
    probe.set_defaults(handler=_probe)


def _probe(args: argparse.Namespace) -> None:
    from sane.downstream.features import FeatureSet
    from sane.errors import ConfigError
    from sane.stages.probe import FEATURES, predict_properties

    names = _names(args.features)
    features = None if names is None else FeatureSet.parse_all(names)
    if any(f.from_sane for f in (FEATURES if features is None else features)) \
            and args.run is None:
        raise ConfigError("the SANE features need a pretraining run: sane probe RUN --out DIR "
                          "(or --features without SANE and --store STORE)")
    result = predict_properties(args.run, args.out, store=args.store, predict=args.predict,
                                **given(features=features, properties=_names(args.properties),
                                        device=args.device, precision=args.precision,
                                        permutations=args.permutations))
    print("test R² [95 % bootstrap interval over test models]")
    print(result.markdown())
    if result.nfn is not None:
        pretraining = ("" if result.pretraining_seconds is None
                       else f", SANE pretraining {result.pretraining_seconds:.0f} s")
        print(f"NFN training {result.nfn['seconds']:.0f} s{pretraining}")
    flagged = [p for p in result.predictions if p.get("ood")]
    if result.predictions:
        print(f"{len(result.predictions)} checkpoints of {args.predict} predicted, "
              f"{len(flagged)} flagged out of distribution")
    print(f"results: {args.out / 'probes.json'}, {args.out / 'probes.md'}")


def _names(text: str | None) -> list[str] | None:
    """``"a, b"`` → ``["a", "b"]``; None (option left out) stays None."""
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]
