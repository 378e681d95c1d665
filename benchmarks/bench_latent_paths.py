"""Does SANE's latent space keep function along paths and from a fitted prior? (issue 20)

Two measurements on a pretraining run and its store, every model scored by test accuracy
(batch norm conditioned on training images, as sampled models are); nothing is selected,
so nothing is chosen on test:

- **Paths.** The ``--pairs`` pairs of consecutive best-on-validation models of the store's
  ``--split`` (default train; val or test: models held out from pretraining) at the prompts'
  epoch (aligned, as the store holds them): the model decoded from the latent line
  ``(1 - t) · z_a + t · z_b`` (:meth:`sane.pipeline.Pipeline.interpolate`) against the
  weight average ``(1 - t) · w_a + t · w_b``, for each ``t`` of ``--ts``; t = 0 is the
  reconstruction of ``a`` against ``a`` itself.
- **Prior.** ``--samples`` models decoded from latents drawn from N(0, 1) per entry (the
  GAUSS protocol's prior) and from two priors fitted on the training models' latents at that
  epoch: per token and latent dimension, their mean and standard deviation (diagonal); and a
  whole-model Gaussian with their mean and covariance (``mean + Σ_i a_i (z_i - mean) /
  sqrt(M - 1)``, ``a ~ N(0, I_M)``: exact for the sample covariance of M models, of rank
  M - 1). Beside them the same whole-model Gaussian fitted on the aligned *weights* (the copy
  baseline a prior must beat) and the training models' own mean accuracy.

Prints one table per measurement: mean test accuracy with a 95 % bootstrap-t interval over
pairs (paths) and the latent − weight difference with its interval. Run on the
``fmnist-seed`` reproduction::

    python benchmarks/bench_latent_paths.py runs/reproduce-fmnist-seed/sane --pairs 10
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sane import markdown
from sane.downstream.intervals import difference_interval, group_interval
from sane.downstream.sampling import score_state
from sane.pipeline import Pipeline
from sane.run import Run
from sane.stages.prompts import store_prompts
from sane.stages.sample import zoo_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a `sane pretrain` run directory")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--ts", default="0,0.25,0.5", help="points on the line (comma list)")
    parser.add_argument("--samples", type=int, default=20, help="draws per prior")
    parser.add_argument("--epoch", type=int, default=None, help="default: the last stored")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"),
                        help="the models whose paths are measured (default train)")
    args = parser.parse_args()
    started = time.time()
    pipe = Pipeline.from_pretrained(args.run)
    store = Run(args.run).store()
    ranked = store_prompts(store, None, args.epoch, best=True, split=args.split)
    first = ranked.arch_index[0]  # pairs of one architecture (a zoo may mix several)
    states = [s for s, a in zip(ranked.states, ranked.arch_index) if a == first]
    if len(states) < args.pairs + 1:
        parser.error(f"{len(states)} {args.split} models of one architecture; --pairs "
                     f"{args.pairs} needs {args.pairs + 1}")
    target = zoo_target(ranked.architectures[first], ranked.data)
    generator = torch.Generator().manual_seed(0)

    def test_acc(state: dict[str, torch.Tensor]) -> float:
        return score_state(dict(state), target, 10, generator).report

    ts = [float(t) for t in args.ts.split(",")]
    latent = np.zeros((args.pairs, len(ts)))
    weight = np.zeros((args.pairs, len(ts)))
    for p in range(args.pairs):
        a, b = states[p], states[p + 1]
        for j, (t, decoded) in enumerate(zip(ts, pipe.interpolate(a, b, ts, aligned=True))):
            latent[p, j] = test_acc(decoded)
            weight[p, j] = test_acc({k: (1 - t) * a[k] + t * b[k] if a[k].is_floating_point()
                                     else a[k] for k in a})
    rows = []
    groups = np.arange(args.pairs)
    for j, t in enumerate(ts):
        low, high = difference_interval(latent[:, j], groups, weight[:, j], groups)
        rows.append([f"{t:g}", _mean(latent[:, j]), _mean(weight[:, j]),
                     f"{latent[:, j].mean() - weight[:, j].mean():+.3f} "
                     f"[{low:+.3f}, {high:+.3f}]"])
    ends = np.array([test_acc(s) for s in states[: args.pairs + 1]])
    print(f"Paths between {args.pairs} pairs of aligned {args.split}-split models at epoch "
          f"{ranked.ids[0][1]} (test accuracy; the models themselves: {_mean(ends)}):\n")
    print(markdown.table(["t", "latent line", "weight line", "latent − weight [95 %]"], rows))

    everyone = ranked.training[first]
    bank = torch.stack(pipe.latents(everyone, aligned=True))  # [M, N, d_z]
    mean, std = bank.mean(dim=0), bank.std(dim=0)
    priors = {"N(0, 1)": lambda g: torch.randn(bank.shape[1:], generator=g),
              "fitted (per token and dimension)":
                  lambda g: mean + std * torch.randn(bank.shape[1:], generator=g),
              "fitted (whole model: mean and covariance)":
                  lambda g: _whole_model_gaussian(bank, g)}
    rows = [["training models themselves", len(everyone),
             _mean(np.array([test_acc(s) for s in everyone]))]]
    for name, draw in priors.items():
        g = torch.Generator().manual_seed(1)
        scores = [test_acc(pipe.decode(draw(g)[None], like=everyone[0])[0])
                  for _ in range(args.samples)]
        rows.append([f"latent: {name}", args.samples, _mean(np.array(scores))])
    keys = [k for k in everyone[0] if everyone[0][k].is_floating_point()]
    weights = torch.stack([torch.cat([s[k].flatten() for k in keys]) for s in everyone])
    g = torch.Generator().manual_seed(1)
    scores = []
    for _ in range(args.samples):
        flat, state, offset = _whole_model_gaussian(weights, g), dict(everyone[0]), 0
        for k in keys:
            state[k] = flat[offset: offset + state[k].numel()].view_as(state[k])
            offset += state[k].numel()
        scores.append(test_acc(state))
    rows.append(["weights: fitted (whole model: mean and covariance)", args.samples,
                 _mean(np.array(scores))])
    print(f"\nZero-shot samples from a prior ({len(everyone)} training models fit it):\n")
    print(markdown.table(["source", "models", "test accuracy [95 %]"], rows))
    print(f"\n{time.time() - started:.0f} s; load {Path('/proc/loadavg').read_text().split()[:3]}")


def _whole_model_gaussian(bank: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw from the Gaussian with the mean and sample covariance of ``bank [M, ...]``
    (M models): ``mean + Σ_i a_i (bank_i - mean) / sqrt(M - 1)``, ``a ~ N(0, I_M)``."""
    mean = bank.mean(dim=0)
    a = torch.randn(len(bank), generator=generator, dtype=bank.dtype)
    return mean + torch.tensordot(a, bank - mean, dims=1) / (len(bank) - 1) ** 0.5


def _mean(values: np.ndarray) -> str:
    low, high = group_interval(lambda rows: float(values[rows].mean()), np.arange(len(values)))
    return f"{values.mean():.3f} [{low:.3f}, {high:.3f}]"


if __name__ == "__main__":
    main()
