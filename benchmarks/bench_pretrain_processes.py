"""Pretraining throughput of 1 and of N data-parallel processes, side by side.

Builds a token store of random CNN-s (``--models`` × 3 checkpoints; throughput does not
depend on what the weights learned), then pretrains on it under ``torchrun`` with 1 process
of ``--cores`` threads and with ``--processes`` processes of ``cores / processes`` threads
each, the same global batch, preset and epochs. Reports training steps per second (the
epochs' training time: validation and whole-model reports excluded) and the ratio to one
process. Run:
``.venv/bin/python benchmarks/bench_pretrain_processes.py [--preset cpu] [--processes 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_store(folder: Path, models: int) -> Path:
    from sane.weights.store import StoreSettings, prepare_store
    from sane.zoo.architectures import ArchConfig, build_model
    from sane.zoo.storage import ModelEntry, Zoo

    arch = ArchConfig(name="cnn_s")
    zoo = Zoo.create(folder / "zoo", [ModelEntry(f"m{i:03d}", i, arch) for i in range(models)],
                     dataset={"name": "digits", "size": 28})
    for i, entry in enumerate(zoo.models):
        for e in range(3):
            zoo.write_epoch(entry.id, e, build_model(arch, seed=100 * i + e).state_dict(),
                            {"test_acc": 0.1 * e, "train_acc": 0.1 * e})
    prepare_store(zoo.path, folder / "store", StoreSettings(align=False), progress=False)
    return folder / "store"


def child(store: str, out: str, preset: str, epochs: int, batch: int) -> None:
    """Under torchrun: pretrain, timing the training steps; rank 0 prints them as JSON."""
    import torch

    from sane.train import PretrainConfig, pretrain, pretraining

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    config = PretrainConfig(preset=preset, epochs=epochs, batch_size=batch, precision="fp32",
                            fidelity_models=1)
    original, figures = pretraining._train_epoch, {"steps": 0, "seconds": 0.0}

    def timed(model, batches, *args, **kwargs):  # the training steps only
        def counted():
            for batch in batches:
                figures["steps"] += 1
                yield batch

        begin = time.perf_counter()
        record = original(model, counted(), *args, **kwargs)
        figures["seconds"] += time.perf_counter() - begin
        return record

    pretraining._train_epoch = timed
    pretrain(store, out, config, progress=False)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="global batch (windows per step)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", nargs=2, metavar=("STORE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.preset, args.epochs, args.batch)
        return

    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp), args.models)
        print(f"store: {args.models} random CNN-s × 3 checkpoints; preset {args.preset!r}, "
              f"global batch {args.batch}, {args.epochs} epochs, fp32, {args.cores} cores")
        print("| processes | threads each | steps | training s | steps/s | ratio |")
        print("|---:|---:|---:|---:|---:|---:|")
        base = None
        for processes in (1, args.processes):
            threads = max(args.cores // processes, 1)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            done = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={processes}", __file__, "--preset", args.preset,
                 "--epochs", str(args.epochs), "--batch", str(args.batch),
                 "--child", str(store), str(Path(tmp) / f"run-{processes}")],
                env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            rate = figures["steps"] / figures["seconds"]
            base = base or rate
            print(f"| {processes} | {threads} | {figures['steps']} | {figures['seconds']:.1f} | "
                  f"{rate:.2f} | {rate / base:.2f}× |")


if __name__ == "__main__":
    main()
