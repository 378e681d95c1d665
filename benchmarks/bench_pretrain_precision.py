"""Pretraining step time in float32 and under bfloat16 autocast, side by side, per preset.

One training step of SANE (two views, forward, masked MSE + NT-Xent, backward, AdamW) on
random CNN-s-sized windows (tokens of 201 values), timed over ``--steps`` steps after
``--warmup``; ``precision = "bf16"`` is worth its setting where its ratio is above 1.
Run: ``.venv/bin/python benchmarks/bench_pretrain_precision.py [--presets tiny,cpu,small]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from sane.model import PRESETS, SANE, SANEConfig
from sane.model.losses import sane_loss


def steps_per_second(preset: str, precision: str, batch: int, steps: int, warmup: int) -> float:
    config = SANEConfig(token_size=201, max_positions=(256, 8, 64), **PRESETS[preset])
    model = SANE(config, seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    w = config.window_size
    tokens = torch.randn(2, batch, w, 201, generator=g)
    mask = torch.ones(batch, w, 201, dtype=torch.bool)
    n = torch.arange(w)
    positions = torch.stack([n, n // 16, n % 16], -1).expand(2 * batch, w, 3)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            _, reconstruction, projection = model(tokens.flatten(0, 1), positions)
        losses = sane_loss(reconstruction.float().view_as(tokens), tokens, mask,
                           (projection[:batch].float(), projection[batch:].float()),
                           gamma=0.05, temperature=0.1)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny,cpu,small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print("| preset | fp32 steps/s | bf16 steps/s | bf16 / fp32 |")
    print("|---|---:|---:|---:|")
    for preset in args.presets.split(","):
        fp32 = steps_per_second(preset, "fp32", args.batch, args.steps, args.warmup)
        bf16 = steps_per_second(preset, "bf16", args.batch, args.steps, args.warmup)
        print(f"| {preset} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
