"""Embedding whole models: one pass over the full sequence vs haloed chunks, side by side.

For token sequences of N tokens of 288 (ResNet-18 with batch norm is 53,524 of them), times
``SANE.embed`` of one model and reports the peak resident memory of the process that did it:

* ``full``: the whole sequence through the encoder at once (attention over N tokens), only up
  to ``--full-max`` tokens, since its memory grows with N;
* ``haloed``: chunks of ``window`` tokens with ``halo`` context tokens on each side (the
  model's defaults: spans as long as a training window), ``--batch`` spans per pass.

Each measurement runs in a fresh subprocess, so that peak memory is its own. Run:
``.venv/bin/python benchmarks/bench_embedding.py [--preset small] [--sizes 2048,8192,32768,53524]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(tokens: int, method: str, preset: str, batch: int) -> dict[str, float]:
    """Run in the child: embed one random model of ``tokens`` tokens, return the figures."""
    import torch

    from sane.model import PRESETS, SANE, SANEConfig

    torch.set_num_threads(2)
    config = SANEConfig(token_size=288, max_positions=(tokens, 100, 600), **PRESETS[preset])
    model = SANE(config).eval()
    n = torch.arange(tokens)
    positions = torch.stack([n, n // 600, n % 600], -1)
    x = torch.randn(1, tokens, 288, generator=torch.Generator().manual_seed(0))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with torch.no_grad():
        if method == "full":
            z = model.encode(x, positions[None]).mean(dim=1)
        else:
            z = model.embed(x, positions, batch_size=batch)
    seconds = time.perf_counter() - start
    assert z.shape == (1, config.d_latent)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "base_mib": base, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--sizes", default="2048,8192,32768,53524")
    parser.add_argument("--full-max", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=64, help="haloed spans per pass")
    parser.add_argument("--child", nargs=2, metavar=("TOKENS", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1], args.preset, args.batch)))
        return

    from sane.model import PRESETS, SANE, SANEConfig

    shape = SANE(SANEConfig(token_size=288, max_positions=(8, 8, 8), **PRESETS[args.preset]))
    window, halo = shape.halo_defaults()
    print(f"SANE preset {args.preset!r}, tokens of 288; haloed: window {window}, halo {halo}, "
          f"{args.batch} spans per pass; 2 threads; one model per fresh process")
    print("'added' = peak memory minus the peak before embedding (torch, model and input)")
    print(f"{'tokens':>8} {'method':>8} {'seconds':>9} {'peak MiB':>9} {'added MiB':>10}")
    for tokens in (int(s) for s in args.sizes.split(",")):
        for method in ("full", "haloed"):
            if method == "full" and tokens > args.full_max:
                print(f"{tokens:>8} {method:>8} {'skipped':>9} {'(> --full-max)':>9}")
                continue
            child = subprocess.run(
                [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch),
                 "--child", str(tokens), method], capture_output=True, text=True, check=True)
            figures = json.loads(child.stdout.strip().splitlines()[-1])
            extra = figures["peak_mib"] - figures["base_mib"]
            print(f"{tokens:>8} {method:>8} {figures['seconds']:>9.2f} "
                  f"{figures['peak_mib']:>9.0f} {extra:>10.0f}")


if __name__ == "__main__":
    main()
