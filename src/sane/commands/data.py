"""``sane data``: inspect the image datasets."""

from __future__ import annotations

import argparse

from sane.settings import given


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect image datasets")
    sub = data.add_subparsers(title="data commands", metavar="COMMAND", required=True)
    info = sub.add_parser("info", help="sizes, class balance and split of a dataset")
    info.add_argument("name", help="dataset name, e.g. digits or fashion-mnist")
    info.add_argument("--root", help="directory holding the dataset's files")
    info.add_argument("--size", type=int, help="resize images to SIZE×SIZE")
    info.add_argument("--seed", type=int, help="split seed (default 0)")
    info.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> None:
    from sane.data import load_dataset

    ds = load_dataset(args.name, **given(root=args.root, size=args.size, seed=args.seed))
    print(f"dataset {ds.name}: {ds.num_classes} classes, input shape {list(ds.input_shape)}")
    print(f"source: {ds.source}")
    print(f"split (seed {ds.seed}): {ds.split_note}")
    mean, std = [round(m, 4) for m in ds.mean], [round(s, 4) for s in ds.std]
    print(f"normalization: mean {mean}, std {std}")
    print()
    header = "| split | examples | " + " | ".join(str(c) for c in range(ds.num_classes)) + " |"
    print(header)
    print("|" + "---|" * (ds.num_classes + 2))
    for name in ("train", "val", "test"):
        split = getattr(ds, name)
        counts = split.class_counts(ds.num_classes)
        print(f"| {name} | {len(split)} | " + " | ".join(map(str, counts)) + " |")
