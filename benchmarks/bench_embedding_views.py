"""Which views a permutation-averaged SANE embedding should use: probe R² against cost.

SANE is only approximately invariant to permutations of a model's hidden units, so its
``SANE+std`` features average views of each model: the model as aligned and ``K`` random
permutations of it (:meth:`sane.pipeline.Pipeline.embed`). Their cost is the encoder's, a
*span* of ``window_size`` tokens at a time, and the encoder is compute-bound on a CPU, so
views cost what their spans cost. This compares, on one store's probes, for several
pretraining runs and several draws of the permutations (``--view-seeds``):

* ``haloed, per view``: each view encoded through haloed spans (``window_size / 2`` tokens of
  content, a quarter of context on each side: twice the spans of the model's tokens) and
  the features (mean and std over tokens) of each view averaged (the default before
  this benchmark);
* ``tiled, per view``: each view encoded in spans side by side, each token once, no context
  (half the spans), the features of each view averaged (:meth:`Pipeline.embed`, checked
  equal here);
* ``tiled, token-averaged``: tiled views, each token's latent averaged over the views first,
  then the mean and std over tokens.

Cost is counted in spans per model and given as a multiple of one haloed pass (what
:meth:`Pipeline.latents` and the old ``--permutations 0`` cost); seconds are measured per
scheme alongside. The validation split chooses, among schemes within ``--budget`` haloed
passes, the one with the highest mean validation R² over the properties; its validation R²
and the default's are compared with the old default's, paired, and the test split is printed
for the three, once. Run (runs of one store, e.g. those of
``benchmarks/bench_probe_defaults.py``)::

    .venv/bin/python benchmarks/bench_embedding_views.py runs/reproduce-fmnist-seed/sane \\
        runs/fmnist-seed-sane-1 runs/fmnist-seed-sane-2 --view-seeds 0,1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sane import markdown
from sane.downstream.features import spread_features
from sane.downstream.probes import probe_table
from sane.model.halo import halo_chunks
from sane.pipeline import Pipeline
from sane.run import Run
from sane.stages.probe import PROPERTIES
from sane.weights.permutations import embedding_views

OLD_DEFAULT = ("haloed, per view", 16)
DEFAULT = ("tiled, per view", 16)  # Pipeline.embed's
HALOED = (3, 16)
TILED_PER_VIEW = (7, 16)
TILED = (3, 7, 16, 64)


def encode(pipe: Pipeline, states: list, perm: dict | None, tiled: bool) -> torch.Tensor:
    """Token latents ``[B, N, d_z]`` of aligned ``states`` permuted by ``perm``."""
    return torch.stack(pipe._encode(0, states, perm, tiled=tiled))


def per_view(z: torch.Tensor) -> torch.Tensor:
    """``z [B, V, N, d]`` -> ``[B, 2·d]``: each view's mean and std over tokens, averaged."""
    return torch.stack([spread_features(z[:, v]) for v in range(z.shape[1])], 1).mean(1)


def features(pipe: Pipeline, store, seed: int, batch: int = 50
             ) -> tuple[dict[tuple[str, int], np.ndarray], dict[str, float]]:
    """``{(scheme, K): [M, 2·d_z]}`` for every checkpoint of ``store``, and the seconds the
    haloed and tiled views took (all ``max(TILED)`` + 1 of them)."""
    tokenizer = pipe.tokenizers[0]
    views = embedding_views(tokenizer.spec, max(TILED), seed)
    out: dict[tuple[str, int], list[np.ndarray]] = {}
    seconds = {"haloed": 0.0, "tiled": 0.0}
    for start in range(0, len(store.rows), batch):
        rows = range(start, min(len(store.rows), start + batch))
        states = [tokenizer.canonical(store.state_dict(r)) for r in rows]
        with torch.no_grad():
            clock = time.perf_counter()
            zh = torch.stack([encode(pipe, states, p, False) for p in views[:max(HALOED) + 1]], 1)
            seconds["haloed"] += time.perf_counter() - clock
            clock = time.perf_counter()
            zt = torch.stack([encode(pipe, states, p, True) for p in views], 1)
            seconds["tiled"] += time.perf_counter() - clock
        found = {("haloed, per view", k): per_view(zh[:, : k + 1]) for k in HALOED}
        found |= {("tiled, per view", k): per_view(zt[:, : k + 1]) for k in TILED_PER_VIEW}
        found |= {("tiled, token-averaged", k): spread_features(zt[:, : k + 1].mean(1))
                  for k in TILED}
        if start == 0:  # the library computes the default scheme
            library = pipe.embed(states, spread=True, permutations=DEFAULT[1], seed=seed,
                                 aligned=True)
            np.testing.assert_allclose(library, found[DEFAULT].numpy(), atol=1e-5)
        for key, value in found.items():
            out.setdefault(key, []).append(value.double().numpy())
    return {key: np.concatenate(parts) for key, parts in out.items()}, seconds


def spans(pipe: Pipeline, n: int) -> tuple[int, int]:
    """Spans per view of an ``n``-token model: haloed, tiled."""
    haloed = len(halo_chunks(n, *pipe.model.halo_defaults())[1])
    return haloed, len(halo_chunks(n, pipe.model.config.window_size, 0)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pretraining runs of one store")
    parser.add_argument("--view-seeds", default="0", help="draws of the permutations (0,1,...)")
    parser.add_argument("--budget", type=float, default=4.0,
                        help="most haloed passes a chosen scheme may cost (default 4)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.view_seeds.split(",")]
    scores: dict[tuple[str, int], dict[str, list[tuple[float, float]]]] = {}
    cost: dict[tuple[str, int], float] = {}
    timing = {"haloed": 0.0, "tiled": 0.0}
    for run in args.runs:
        pipe = Pipeline.from_pretrained(run)
        store = Run(run).store(None)
        haloed, tiled = spans(pipe, pipe.tokenizers[0].manifest.num_tokens)
        splits = {s: store.split_rows(s) for s in ("train", "val", "test")}
        groups = [g for g, _, _ in store.rows]
        targets = {p: store.property(p) for p in PROPERTIES}
        for seed in seeds:
            found, seconds = features(pipe, store, seed)
            timing = {k: timing[k] + seconds[k] for k in timing}
            print(f"{run}, view seed {seed}: {len(store.rows)} checkpoints, spans per view "
                  f"{haloed} haloed / {tiled} tiled, seconds {seconds}", flush=True)
            for key, x in found.items():
                cost[key] = (key[1] + 1) * (haloed if key[0].startswith("haloed") else tiled
                                            ) / haloed
                for row in probe_table({"SANE+std": x}, targets, splits, groups, resamples=10):
                    scores.setdefault(key, {}).setdefault(row.property, []).append(
                        (row.r2_val, row.r2_test))
    n = len(args.runs) * len(seeds)
    print(f"\nValidation R² of SANE+std, mean ± sd over {len(args.runs)} runs × {len(seeds)} "
          f"view seeds; seconds of all views: {timing}\n")
    rows = []
    for key, props in sorted(scores.items(), key=lambda item: cost[item[0]]):
        rows.append([key[0], str(key[1]), f"{cost[key]:.2f}",
                     *(f"{np.mean([v for v, _ in props[p]]):.3f} ± "
                       f"{np.std([v for v, _ in props[p]], ddof=1) if n > 1 else 0:.3f}"
                       for p in PROPERTIES)])
    print(markdown.table(["views", "K", "haloed passes", *PROPERTIES], rows))

    def mean_val(key: tuple[str, int]) -> float:
        return float(np.mean([v for p in PROPERTIES for v, _ in scores[key][p]]))

    chosen = max((k for k in scores if cost[k] <= args.budget), key=mean_val)
    print(f"\nchosen on validation within {args.budget:g} haloed passes: {chosen[0]}, "
          f"K={chosen[1]}\n")
    for name, key in (("chosen", chosen), ("default", DEFAULT)):
        diffs = []
        for p in PROPERTIES:
            d = [a - b for (a, _), (b, _) in zip(scores[key][p], scores[OLD_DEFAULT][p])]
            diffs.append([p, f"{np.mean(d):+.3f}", f"{min(d):+.3f} … {max(d):+.3f}"])
        print(f"validation R², {name} ({key[0]}, K={key[1]}) − old default, paired over the "
              f"{n} (run, view seed):\n")
        print(markdown.table(["property", "mean", "range"], diffs) + "\n")
    print("test R² (mean over runs and view seeds), reported once:\n")
    print(markdown.table(["views", "K", *PROPERTIES], [
        [key[0], str(key[1]), *(f"{np.mean([t for _, t in scores[key][p]]):.3f}"
                                for p in PROPERTIES)]
        for key in dict.fromkeys((chosen, DEFAULT, OLD_DEFAULT))]))


if __name__ == "__main__":
    main()
