"""``sane probe``: predict model properties from SANE embeddings and weight baselines."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    probe = subparsers.add_parser(
        "probe", help="predict accuracy, epoch and generalization gap with linear probes",
        description="Embed every checkpoint of a token store with a pretrained SANE (haloed, "
        "mean over tokens), compute the W and s(W) baselines, and fit one ridge probe per "
        "feature set and property on the training split, its strength chosen on the "
        "validation split. Prints and writes R² per split.",
    )
    probe.add_argument("run", type=Path, nargs="?",
                       help="pretraining run directory (from `sane pretrain`)")
    probe.add_argument("--out", required=True, type=Path, help="output directory")
    probe.add_argument("--store", type=Path,
                       help="token store (default: the one the run was trained on)")
    probe.add_argument("--features", default="SANE,W,sW-layer",
                       help="comma-separated feature sets: SANE, W, sW-layer, sW-tensor-var, "
                       "sW-tensor-std (default: SANE,W,sW-layer)")
    probe.add_argument("--properties", default="test_acc,epoch,ggap",
                       help="comma-separated properties (default: test_acc,epoch,ggap)")
    probe.set_defaults(handler=_probe)


def _probe(args: argparse.Namespace) -> None:
    from sane.downstream.probes import markdown_table
    from sane.downstream.property_prediction import predict_properties
    from sane.errors import ConfigError

    features = [f.strip() for f in args.features.split(",") if f.strip()]
    if "SANE" in features and args.run is None:
        raise ConfigError("the SANE features need a pretraining run: sane probe RUN --out DIR "
                          "(or --features without SANE and --store STORE)")
    rows = predict_properties(args.run, args.out, store=args.store, features=features,
                              properties=[p.strip() for p in args.properties.split(",")])
    print("test R² (validation R²)")
    print(markdown_table(rows))
    print(f"results: {args.out / 'probes.json'}, {args.out / 'probes.md'}")
