"""Pretraining step time in float32 and under bfloat16 autocast, side by side, per preset and
device, with the model FLOP utilization where the device's peak is given.

One training step of SANE (two views, forward, masked MSE + NT-Xent, backward, AdamW) on
random CNN-s-sized windows (tokens of 201 values), timed over ``--steps`` steps after
``--warmup``; ``precision = "bf16"`` is worth its setting where its ratio is above 1. The
FLOPs of one step are counted once per preset (``torch.utils.flop_counter``: matrix
products and attention, forward and backward); ``--peak-tflops`` (the device's dense bf16
peak, e.g. 989 for an H100/H200 SXM) turns the bf16 rate into a model FLOP utilization; on
a CPU, where no datasheet peak applies, the float32 and bfloat16 peaks of a square matmul are
measured in the same run, before and after the presets, and each rate is printed as a fraction
of its precision's peak (the load average is printed beside them: the machine may be shared).
On a busy machine, run it with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that spin while a
core is taken by another process made a 2-thread step 13× slower here (measured).
``--compile`` times the model under ``torch.compile`` (compilation excluded from the timing).
``--profile`` adds, per preset, where a bf16 step's time goes (torch.profiler, self CPU
time by operator: matrix products, dtype casts, the rest), the measure of what bounds the
rate below the matmul peak.
Run: ``.venv/bin/python benchmarks/bench_pretrain_precision.py [--presets tiny,cpu,small]
[--profile] [--device cuda --presets cnn --batch 256 --peak-tflops 989]``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sane.model import PRESETS, SANE, SANEConfig
from sane.model.losses import sane_loss


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an ``n × n`` CPU matmul in ``dtype`` with the current threads."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class Step:
    """One pretraining step of a ``preset`` SANE on a fixed random batch, on ``device``."""

    def __init__(self, preset: str, batch: int, device: torch.device) -> None:
        config = SANEConfig(token_size=201, max_positions=(256, 8, 64), **PRESETS[preset])
        self.model = SANE(config, seed=0).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        w = config.window_size
        self.tokens = torch.randn(2, batch, w, 201, generator=g).to(device)
        self.mask = torch.ones(batch, w, 201, dtype=torch.bool, device=device)
        n = torch.arange(w)
        self.positions = torch.stack([n, n // 16, n % 16], -1).expand(2 * batch, w, 3).to(device)
        self.device, self.batch = device, batch

    def __call__(self, precision: str) -> None:
        b = self.batch
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=precision == "bf16"):
            _, reconstruction, projection = self.model(self.tokens.flatten(0, 1),
                                                       self.positions)
        losses = sane_loss(reconstruction.float().view_as(self.tokens), self.tokens, self.mask,
                           (projection[:b].float(), projection[b:].float()),
                           gamma=0.05, temperature=0.1)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()

    def per_second(self, precision: str, steps: int, warmup: int) -> float:
        for i in range(warmup + steps):
            if i == warmup:
                self._sync()
                start = time.perf_counter()
            self(precision)
        self._sync()
        return steps / (time.perf_counter() - start)

    def profile(self, precision: str, steps: int = 5) -> dict[str, float]:
        """Share of self CPU time per operator over ``steps`` steps (after one warm-up)."""
        self(precision)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                self(precision)
        times = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
        total = sum(times.values())
        return {k: v / total for k, v in sorted(times.items(), key=lambda kv: -kv[1])}

    def flops(self) -> int:
        """FLOPs of one step, counted in float32."""
        counter = FlopCounterMode(display=False)
        with counter:
            self("fp32")
        return counter.get_total_flops()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny,cpu,small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--compile", action="store_true",
                        help="time the model under torch.compile (compilation not timed)")
    parser.add_argument("--profile", action="store_true",
                        help="print where a bf16 step's time goes, per preset")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's dense bf16 peak, for the FLOP utilization")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, batch {args.batch}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    cpu = device.type == "cpu"
    peaks: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}

    def measure_peaks() -> None:
        for dtype, values in peaks.items():
            values.append(matmul_peak(dtype))
        print(f"matmul peak fp32 {peaks[torch.float32][-1] / 1e9:.0f}, bf16 "
              f"{peaks[torch.bfloat16][-1] / 1e9:.0f} GFLOP/s (load average {load_average()})")

    if cpu:
        measure_peaks()
    rows = []
    for preset in args.presets.split(","):
        step = Step(preset, args.batch, device)
        flops = step.flops()
        if args.compile:
            step.model = torch.compile(step.model)
        fp32 = step.per_second("fp32", args.steps, args.warmup)
        bf16 = step.per_second("bf16", args.steps, args.warmup)
        rows.append((preset, flops, fp32, bf16))
        if args.profile:
            _print_profile(preset, step.profile("bf16"))
    if cpu:
        measure_peaks()
    print("| preset | fp32 steps/s | bf16 steps/s | bf16 / fp32 | GFLOP/step | fp32 GFLOP/s "
          "| of fp32 peak | bf16 GFLOP/s | of bf16 peak | bf16 MFU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fp32_peak, bf16_peak = (max(v) if v else float("nan") for v in peaks.values())
    for preset, flops, fp32, bf16 in rows:
        rate = flops * bf16
        mfu = "–" if args.peak_tflops is None else f"{rate / 1e12 / args.peak_tflops:.1%}"
        print(f"| {preset} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.2f}× | {flops / 1e9:.1f} "
              f"| {flops * fp32 / 1e9:.1f} | {flops * fp32 / fp32_peak:.1%} "
              f"| {rate / 1e9:.1f} | {rate / bf16_peak:.1%} | {mfu} |", flush=True)


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
           "aten::linear", "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
CASTS = ("aten::copy_", "aten::to", "aten::_to_copy")


def _print_profile(preset: str, shares: dict[str, float]) -> None:
    matmul = sum(v for k, v in shares.items() if k in MATMULS)
    casts = sum(v for k, v in shares.items() if k in CASTS)
    top = ", ".join(f"{k} {v:.0%}" for k, v in list(shares.items())[:8])
    print(f"{preset} bf16 step, self CPU time: matrix products {matmul:.0%}, casts "
          f"{casts:.0%}, the rest {1 - matmul - casts:.0%}; largest: {top}", flush=True)


if __name__ == "__main__":
    main()
