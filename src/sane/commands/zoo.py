"""``sane zoo``: train populations, import/export the Model Zoos layout, summarize a zoo."""

from __future__ import annotations

import argparse
from pathlib import Path

from sane.settings import given


def register(subparsers: argparse._SubParsersAction) -> None:
    zoo = subparsers.add_parser("zoo", help="train, import, export and summarize model zoos")
    sub = zoo.add_subparsers(title="zoo commands", metavar="COMMAND", required=True)

    train = sub.add_parser(
        "train", help="train a population of models (resumes an interrupted run)",
        description="Train a population described by a TOML file or a preset name "
        "(see `sane zoo presets`). Rerunning the same command after an interruption resumes "
        "without retraining finished epochs.",
    )
    train.add_argument("config", help="TOML file or preset name")
    train.add_argument("--out", required=True, type=Path, help="zoo directory to create or resume")
    train.add_argument("--models", type=int, help="override the number of models")
    train.add_argument("--epochs", type=int, help="override the number of epochs")
    train.add_argument("--train-size", type=int, help="override the number of training images")
    train.add_argument("--backend", choices=["local", "ray"],
                       help="where groups of models train: this machine's processes (default) "
                       "or Ray tasks (needs `pip install 'sane[ray]'`)")
    train.add_argument("--address", metavar="ADDR",
                       help="address of a running Ray cluster (e.g. ray://head:10001 or auto; "
                       "default: start Ray on this machine); the zoo directory must be on a "
                       "filesystem every node sees")
    train.set_defaults(handler=_train)

    presets = sub.add_parser("presets", help="list the named population presets")
    presets.set_defaults(handler=_presets)

    imp = sub.add_parser("import", help="import a zoo in the published Model Zoos layout")
    imp.add_argument("path", type=Path, help="directory of ray-tune trial folders")
    imp.add_argument("--out", required=True, type=Path,
                     help="zoo directory to create (or to finish, after an interruption)")
    imp.add_argument("--max-abs", type=float, metavar="X",
                     help="skip checkpoints with a weight of magnitude above X "
                     "(default 1e4; the Model Zoos loaders used 5 for the CNN zoos)")
    imp.add_argument("--split-seed", type=int, help="seed of the 70/15/15 split (default 0)")
    imp.add_argument("--strict", action="store_true", default=None,
                     help="fail on the first bad trial or checkpoint instead of skipping it")
    imp.set_defaults(handler=_import)

    exp = sub.add_parser("export", help="write a zoo in another layout")
    exp.add_argument("zoo", type=Path)
    exp.add_argument("--format", choices=["modelzoos"], default="modelzoos")
    exp.add_argument("--out", required=True, type=Path)
    exp.set_defaults(handler=_export)

    info = sub.add_parser("info", help="summary table and accuracy plot of a zoo")
    info.add_argument("zoo", type=Path)
    info.add_argument("--plot", type=Path, help="PNG path (default: ZOO/accuracy.png)")
    info.set_defaults(handler=_info)


def _train(args: argparse.Namespace) -> None:
    from sane.zoo.config import load_config
    from sane.zoo.generate import train_population

    config = load_config(args.config, **given(models=args.models, epochs=args.epochs,
                                              train_size=args.train_size))
    zoo = train_population(config, args.out, **given(backend=args.backend,
                                                     address=args.address))
    print(f"zoo with {len(zoo.models)} models written to {zoo.path}")


def _presets(args: argparse.Namespace) -> None:
    from sane.zoo.config import PRESETS

    for name, preset in sorted(PRESETS.items()):
        print(f"{name:32s} {preset.description}")


def _import(args: argparse.Namespace) -> None:
    from sane.zoo.modelzoos.reader import import_modelzoos

    report = import_modelzoos(args.path, args.out, **given(
        max_abs=args.max_abs, split_seed=args.split_seed, strict=args.strict))
    print(report)


def _export(args: argparse.Namespace) -> None:
    from sane.zoo.modelzoos.writer import export_modelzoos

    export_modelzoos(args.zoo, args.out)
    print(f"exported {args.zoo} to {args.out} ({args.format} layout)")


def _info(args: argparse.Namespace) -> None:
    from sane.zoo.storage import Zoo
    from sane.zoo.summary import plot_accuracy, summary_table

    zoo = Zoo.open(args.zoo)
    print(summary_table(zoo))
    png = args.plot or zoo.path / "accuracy.png"
    plot_accuracy(zoo, png)
    print(f"plot: {png}")
