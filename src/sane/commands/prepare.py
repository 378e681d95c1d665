"""``sane prepare``: tokenize a zoo once into a memory-mapped token store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from sane.errors import ConfigError
from sane.settings import given

if TYPE_CHECKING:  # the command imports torch only when it runs
    from sane.weights.store import StoreSettings, TokenStore


def register(subparsers: argparse._SubParsersAction) -> None:
    prepare = subparsers.add_parser(
        "prepare", help="tokenize every checkpoint of a zoo into a token store",
        description="Tokenize every checkpoint of a zoo once into a memory-mapped token store "
        "(standardized per tensor on the training split; optionally aligned to one reference "
        "model by weight matching). Rerunning with the same settings reuses a finished store.",
    )
    prepare.add_argument("zoo", type=Path, help="zoo directory (from `sane zoo train/import`)")
    prepare.add_argument("--out", required=True, type=Path, help="store directory to create")
    prepare.add_argument("--token-size", type=int, help="values per token (default: longest row)")
    prepare.add_argument("--align", action="store_true", default=None,
                         help="align every model to one reference by weight matching")
    prepare.add_argument("--include-batchnorm", action="store_true", default=None,
                         help="tokenize batch-norm parameters and statistics too")
    prepare.add_argument("--epochs", help="epochs to store, e.g. '21-25' or '0,5,10' (default all)")
    prepare.add_argument("--seed", type=int,
                         help="seed of the weight matching order (default 0)")
    prepare.add_argument("--max-abs", type=float,
                         help="leave out checkpoints with a weight of magnitude above MAX_ABS "
                         "(diverged models; default 1e8, the largest weight any command accepts)")
    prepare.set_defaults(handler=_prepare)


def parse_epochs(text: str | None) -> tuple[int, ...] | None:
    """``"21-25"`` → ``(21, ..., 25)``; ``"0,5,10"`` → ``(0, 5, 10)``; ``None`` → all."""
    if text is None:
        return None
    epochs: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            epochs.update(range(int(first), int(last or first) + 1))
    except ValueError as error:
        raise ConfigError(f"--epochs: expected e.g. '21-25' or '0,5,10', got {text!r}") from error
    if not epochs or min(epochs) < 0:
        raise ConfigError(f"--epochs: expected non-negative epochs, got {text!r}")
    return tuple(sorted(epochs))


def _prepare(args: argparse.Namespace) -> None:
    from sane.weights.store import StoreSet, StoreSettings, prepare_store

    settings = StoreSettings(**given(token_size=args.token_size, align=args.align,
                                     include_batchnorm=args.include_batchnorm,
                                     epochs=parse_epochs(args.epochs), seed=args.seed,
                                     max_abs=args.max_abs))
    store = prepare_store(args.zoo, args.out, settings)
    if isinstance(store, StoreSet):
        print(f"token store of a mixed zoo {store.path}: {len(store.layouts)} layouts")
        for k, layout in enumerate(store.layouts):
            _describe(layout, settings, f"layouts/{k} ({layout.architectures[0].name}): ")
    else:
        _describe(store, settings, "")


def _describe(store: TokenStore, settings: StoreSettings, label: str) -> None:
    from sane.checkpoints import weight_limit

    m = store.manifest
    print(f"{label}token store {store.path}: {len(store.rows)} checkpoints × {m.num_tokens} "
          f"tokens × {m.token_size} values ({store.tokens.nbytes / 2**20:.1f} MiB)")
    for split in ("train", "val", "test"):
        print(f"  {split}: {len(store.split_rows(split))} checkpoints")
    if store.meta["skipped_non_finite"]:
        print(f"  left out: {store.meta['skipped_non_finite']} checkpoints with non-finite weights")
    if store.meta.get("skipped_above_max_abs"):
        print(f"  left out: {store.meta['skipped_above_max_abs']} checkpoints with weights above "
              f"{weight_limit(settings.max_abs):g}")
    if settings.align:
        print(f"  aligned to {store.meta['alignment_reference']}")
