"""How fast can a CPU train a zoo of CNN-s? Every method side by side, in one run.

Trains CNN-s on Fashion-MNIST (the 60,000 official training images by default) with Adam and
batch 64, and prints for each method the models·epochs per second, the ratio to plain
one-at-a-time training and the achieved FLOP/s as a fraction of a float32 matmul peak
measured in the same run. Methods:

* ``plain``: one model at a time, default (NCHW) memory layout;
* ``channels_last``: one model at a time, channels-last layout;
* ``population``: the default path of ``sane zoo train``: the engine of
  :mod:`sane.zoo.population` (grouped convolutions, channels-last) in ``--threads`` worker
  processes of one thread each, ``--models`` models in groups of ``--group-size``;
* ``population_bf16``: ``population`` under bfloat16 autocast (convolutions and matrix
  products in bf16, weights, gradients and the optimizer in float32);
* ``population_threads``: the same engine in one process with ``--threads`` threads, all
  ``--models`` models in one group;
* ``vmap``: ``torch.func.vmap`` of ``grad`` over the stacked models' parameters;
* ``compile``: ``plain`` with ``torch.compile`` (compilation excluded from the timing).

FLOPs are counted analytically: a training step costs three forward passes (forward, input
gradient, weight gradient) of ``2·MACs`` of every convolution and linear layer; pooling,
activations and the optimizer are not counted.

``--profile`` then shows where a step of one group goes on one thread (convolutions,
pooling, the rest; each forward convolution's FLOP/s against one core's share of the peak).

Run: ``.venv/bin/python benchmarks/bench_zoo_training.py [--train-size 6000] [--epochs 1]``.
Timing is noisy on a shared machine: ``--rounds R`` repeats every method R times,
interleaved, and reports the best and the median round; the matmul peak is measured again in
every round, beside the methods, and the load average is printed with each round.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench_pretrain_precision import load_average
from bench_pretrain_precision import matmul_peak as float32_peak
from sane.data import load_dataset
from sane.zoo.architectures import ArchConfig, build_model
from sane.zoo.config import PopulationConfig
from sane.zoo.population import (
    StackedNet,
    data_order,
    model_layout,
    train_epoch,
)
from sane.zoo.stacked_optimizer import StackedOptimizer

ARCH = ArchConfig(name="cnn_s", activation="tanh", init="kaiming_uniform")
LR = 1e-3


def load_images(train_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official Fashion-MNIST training images (train + validation splits), normalized."""
    ds = load_dataset("fashion-mnist")
    x, y = torch.cat([ds.train.x, ds.val.x]), torch.cat([ds.train.y, ds.val.y])
    return x[:train_size].contiguous(), y[:train_size].contiguous()


def forward_flops(arch: ArchConfig) -> int:
    """FLOPs (2·MACs) of the convolutions and linear layers for one image."""
    model = build_model(arch, 0)
    total = 0

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] \
                * module.kernel_size[1]
            total += 2 * output.numel() * per_output
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, arch.in_channels, arch.input_size, arch.input_size))
    for hook in hooks:
        hook.remove()
    return total


def matmul_peak(threads: int) -> float:
    """Best float32 FLOP/s of a 2048 × 2048 matmul with ``threads`` threads."""
    torch.set_num_threads(threads)
    return float32_peak(torch.float32, repeats=10)


# -- methods: each returns (models·epochs trained, seconds) ---------------------------------

def one_at_a_time(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                  layout: torch.memory_format, compiled: bool = False) -> tuple[float, float]:
    torch.set_num_threads(args.threads)
    if layout == torch.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    elapsed = 0.0
    for seed in range(args.alone):
        model = build_model(ARCH, seed).to(memory_format=layout)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        step_fn = _step(model, optimizer)
        if compiled:
            step_fn = torch.compile(step_fn)
            last = len(y) % args.batch_size or args.batch_size
            for size in {args.batch_size, last}:  # compile both batch shapes outside the timing
                step_fn(x[:size], y[:size])
        start = time.perf_counter()
        for epoch in range(1, args.epochs + 1):
            order = data_order(seed, epoch, len(y))
            for i in range(0, len(y), args.batch_size):
                index = order[i:i + args.batch_size]
                step_fn(x[index], y[index])
        elapsed += time.perf_counter() - start
    return args.alone * args.epochs, elapsed


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> Callable:
    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def population_threads(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
                       ) -> tuple[float, float]:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    _train_groups(model_layout(x), y, args, [list(range(args.models))])
    return args.models * args.epochs, time.perf_counter() - start


def _train_groups(xm: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                  groups: list[list[int]]) -> None:
    """Train each group of seeds as one population, as ``sane zoo train`` does."""
    for seeds in groups:
        net, optimizer = _population(seeds)
        for epoch in range(1, args.epochs + 1):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                train_epoch(net, optimizer, xm, y, seeds=seeds, epoch=epoch,
                            batch_size=args.batch_size)


def _population(seeds: list[int]) -> tuple[StackedNet, StackedOptimizer]:
    """The CNN-s of ``seeds`` stacked, with Adam at :data:`LR` for each."""
    count = len(seeds)
    net = StackedNet([build_model(ARCH, s) for s in seeds])
    return net, StackedOptimizer(net, ["adam"] * count, [LR] * count, [0.0] * count,
                                 [0.0] * count)


def _process(args: argparse.Namespace, groups: list[list[int]], ready: Any, go: Any,
             done: Any) -> None:
    torch.set_num_threads(1)
    x, y = load_images(args.train_size)
    xm = model_layout(x)
    ready.wait()
    go.wait()
    _train_groups(xm, y, args, groups)
    done.put(sum(len(g) for g in groups))


def population(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
               ) -> tuple[float, float]:
    del x, y  # each process loads its own copy
    seeds = list(range(args.models))
    count = -(-args.models // args.group_size)
    groups = [seeds[i * args.models // count:(i + 1) * args.models // count]
              for i in range(count)]
    workers = min(args.threads, count)
    context = mp.get_context("spawn")
    ready, go, done = context.Barrier(workers + 1), context.Barrier(workers + 1), context.Queue()
    processes = [context.Process(target=_process, args=(args, groups[i::workers], ready, go,
                                                        done))
                 for i in range(workers)]
    for process in processes:
        process.start()
    ready.wait()
    start = time.perf_counter()
    go.wait()
    trained = sum(done.get() for _ in processes)
    elapsed = time.perf_counter() - start
    for process in processes:
        process.join()
    return trained * args.epochs, elapsed


def vmap_models(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
                ) -> tuple[float, float]:
    from torch.func import functional_call, grad, vmap

    torch.set_num_threads(args.threads)
    count = args.models
    models = [build_model(ARCH, s) for s in range(count)]
    base = models[0]
    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models])
              for k, _ in base.named_parameters()}
    moments = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in params.items()}

    def loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, p, (xb,)), yb)

    gradient = vmap(grad(loss))
    step = 0
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        orders = torch.stack([data_order(s, epoch, len(y)) for s in range(count)])
        for i in range(0, len(y), args.batch_size):
            index = orders[:, i:i + args.batch_size]
            grads = gradient(params, x[index], y[index])
            step += 1
            with torch.no_grad():  # Adam, as torch.optim.Adam computes it
                for k, g in grads.items():
                    m, v = moments[k]
                    m.lerp_(g, 0.1)
                    v.mul_(0.999).addcmul_(g, g, value=0.001)
                    denom = (v.sqrt() / (1 - 0.999**step) ** 0.5).add_(1e-8)
                    params[k].addcdiv_(m, denom, value=-LR / (1 - 0.9**step))
    return count * args.epochs, time.perf_counter() - start


METHODS: dict[str, Callable[..., tuple[float, float]]] = {
    "plain": lambda x, y, a: one_at_a_time(x, y, a, torch.contiguous_format),
    "channels_last": lambda x, y, a: one_at_a_time(x, y, a, torch.channels_last),
    "population": population,
    "population_bf16": lambda x, y, a: population(x, y, argparse.Namespace(**{**vars(a),
                                                                             "bf16": True})),
    "population_threads": population_threads,
    "vmap": vmap_models,
    "compile": lambda x, y, a: one_at_a_time(x, y, a, torch.contiguous_format, compiled=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", type=int, default=32, help="models of the population methods")
    parser.add_argument("--group-size", type=int,
                        help="models per group of the population method (default: as "
                        "`sane zoo train` chooses for the batch size)")
    parser.add_argument("--alone", type=int, default=2,
                        help="models trained one at a time by plain, channels_last, compile")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one group's steps on one thread (torch.profiler)")
    args = parser.parse_args()
    args.bf16 = False  # population_bf16 turns it on for its own run
    if args.group_size is None:
        args.group_size = PopulationConfig().models_per_group(args.batch_size)
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}")

    x, y = load_images(args.train_size)
    peaks = [matmul_peak(args.threads)]
    flops_per_image = 3 * forward_flops(ARCH)
    print(f"CNN-s on {len(y)} Fashion-MNIST images, batch {args.batch_size}, Adam, "
          f"{args.epochs} epoch(s), {args.threads} threads; population: {args.models} models in "
          f"groups of {args.group_size}; {args.alone} one at a time")
    print(f"training {flops_per_image / 1e6:.3f} MFLOP per image")
    rates: dict[str, list[float]] = {m: [] for m in methods}
    for round_ in range(args.rounds):
        if round_:
            peaks.append(matmul_peak(args.threads))
        print(f"  round {round_ + 1} matmul peak {peaks[-1] / 1e9:.1f} GFLOP/s, load average "
              f"{load_average()}", flush=True)
        for method in methods:
            try:
                model_epochs, seconds = METHODS[method](x, y, args)
            except Exception as error:  # a method that fails on this machine is reported
                print(f"  {method}: failed ({type(error).__name__}: {error})")
                continue
            rates[method].append(model_epochs / seconds)
            print(f"  round {round_ + 1} {method:17s} {model_epochs:5.0f} model-epochs in "
                  f"{seconds:7.1f} s", flush=True)
    peak = max(peaks)
    print(f"\nfloat32 matmul peak ({args.threads} threads) best {peak / 1e9:.1f}, median "
          f"{statistics.median(peaks) / 1e9:.1f} GFLOP/s; load average {load_average()}")
    print(f"{'method':17s} {'best m·e/s':>11s} {'median':>8s} {'s/model-epoch':>14s} "
          f"{'vs plain':>9s} {'GFLOP/s':>8s} {'of peak':>8s}  vs plain, round by round")
    plain = max(rates.get("plain") or [float("nan")])
    for method, values in rates.items():
        if not values:
            continue
        best = max(values)
        achieved = best * len(y) * flops_per_image
        print(f"{method:17s} {best:11.4f} {statistics.median(values):8.4f} {1 / best:14.2f} "
              f"{best / plain:8.2f}x {achieved / 1e9:8.2f} {achieved / peak:8.1%}  "
              + " ".join(f"{v / p:.2f}x" for v, p in zip(values, rates.get("plain", []))))
    if args.profile:
        profile_group(x, y, args, peak / args.threads)


def profile_group(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace,
                  core_peak: float, steps: int = 20) -> None:
    """Where a step of one population group goes on one thread: the share of self CPU time
    of convolutions, pooling (with its zero-filled gradient) and the rest, and each forward
    convolution's FLOP/s against one core's share of the matmul peak ``core_peak``."""
    torch.set_num_threads(1)
    seeds = list(range(args.group_size))
    net, optimizer = _population(seeds)
    xm, n = model_layout(x), args.batch_size * steps
    train_epoch(net, optimizer, xm[:n], y[:n], seeds=seeds, epoch=0, batch_size=args.batch_size)
    with torch.profiler.profile(record_shapes=True) as prof:
        train_epoch(net, optimizer, xm[:n], y[:n], seeds=seeds, epoch=1,
                    batch_size=args.batch_size)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)

    def share(names: tuple[str, ...]) -> float:
        return sum(e.self_cpu_time_total for e in events if e.key in names) / total

    conv = share(("aten::mkldnn_convolution", "aten::convolution_backward"))
    pool = share(("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward",
                  "aten::fill_"))
    print(f"\none group of {len(seeds)} models, {steps} steps, one thread: convolutions "
          f"{conv:.0%} of self CPU time, max pooling with its zero-filled gradient {pool:.0%}, "
          f"the rest {1 - conv - pool:.0%}")
    for e in events:
        if e.key == "aten::mkldnn_convolution":
            (b, _, h, w), (c_out, c_in, kh, kw) = e.input_shapes[0], e.input_shapes[1]
            flops = 2 * b * c_out * (h - kh + 1) * (w - kw + 1) * c_in * kh * kw
            rate = flops * e.count / (e.self_cpu_time_total * 1e-6)
            print(f"  forward convolution {e.input_shapes[0]} * {e.input_shapes[1]}: "
                  f"{e.self_cpu_time_total / e.count / 1e3:.2f} ms, {rate / 1e9:.1f} GFLOP/s, "
                  f"{rate / core_peak:.0%} of one core's peak")


if __name__ == "__main__":
    main()
