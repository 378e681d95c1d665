"""Token store vs re-tokenizing a permuted checkpoint per sample, side by side.

For CNN-s and ResNet-18 (batch norm included: 53,524 tokens of 288), builds a small zoo of
random models in a temporary directory, prepares a token store, then measures windows per
second for

* ``store``: :class:`sane.train.WindowSampler` (random window, random permutation gathered by
  index arithmetic, multiplicative noise) reading the memory-mapped store, in batches of 32;
* ``re-tokenize``: the reference code's approach: load the checkpoint, draw a permutation,
  permute the state dict, standardize, tokenize the whole model, cut the window, add noise;

and prints bytes on disk per checkpoint (store vs zoo checkpoint) and the number of stored
copies. Run: ``.venv/bin/python benchmarks/bench_token_store.py [--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sane.train import WindowConfig, WindowSampler
from sane.weights import apply_permutation, random_permutation, tokenize
from sane.weights.augment import add_noise
from sane.weights.store import StoreSettings, prepare_store
from sane.zoo import ArchConfig, ModelEntry, Zoo, build_model

CASES = {
    "CNN-s": (ArchConfig(name="cnn_s"), 12, 3, None, 32),
    "ResNet-18": (ArchConfig(name="resnet18", in_channels=3, input_size=32), 4, 1, 288, 256),
}


def make_zoo(path: Path, arch: ArchConfig, models: int, epochs: int) -> Zoo:
    zoo = Zoo.create(path, [ModelEntry(f"m{i:03d}", i, arch) for i in range(models)],
                     dataset={"name": "none"})
    for i, entry in enumerate(zoo.models):
        for e in range(epochs):
            state = build_model(arch, seed=100 * i + e).state_dict()
            zoo.write_epoch(entry.id, e, state, {"test_acc": 0.5})
    return zoo


def time_store(store, window: int, samples: int, batch_size: int = 32) -> float:
    config = WindowConfig(window_size=window, batch_size=batch_size, permute=True, views=1,
                          multiplicative_noise=0.1)
    sampler = WindowSampler(store, "train", config, seed=0)
    rows = store.split_rows("train")
    generator = torch.Generator().manual_seed(0)
    batch_rows = rows[torch.randint(0, len(rows), (batch_size,), generator=generator).numpy()]
    sampler.batch(batch_rows, generator)  # warm-up
    batches = max(1, samples // batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        sampler.batch(batch_rows, generator)
    return batches * batch_size / (time.perf_counter() - start)


def time_retokenize(zoo: Zoo, store, window: int, samples: int) -> float:
    spec, model = store.spec, build_model(zoo.models[0].architecture)
    rows = [store.rows[i] for i in store.split_rows("train")]
    generator = torch.Generator().manual_seed(0)
    token_size = store.manifest.token_size
    batchnorm = store.manifest.include_batchnorm

    def sample(i: int) -> torch.Tensor:
        model_id, epoch, _ = rows[i % len(rows)]
        state = zoo.load_checkpoint(model_id, epoch)
        state = apply_permutation(state, spec, random_permutation(spec, generator))
        tokens = tokenize(store.standardization.apply(state), token_size, model=model,
                          include_batchnorm=batchnorm)
        start = int(torch.randint(0, tokens.manifest.num_tokens - window + 1, (1,),
                                  generator=generator))
        cut = slice(start, start + window)
        return add_noise(tokens.tokens[cut], tokens.mask[cut], generator, multiplicative=0.1)

    sample(0)  # warm-up
    start = time.perf_counter()
    for i in range(samples):
        sample(i)
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"{'model':10s} {'tokens':>7s} {'store win/s':>12s} {'re-tok win/s':>13s} "
          f"{'speed-up':>9s} {'store B/ckpt':>13s} {'ckpt B':>11s} {'copies':>7s}")
    for name, (arch, models, epochs, token_size, window) in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            zoo = make_zoo(Path(tmp) / "zoo", arch, models, epochs)
            store = prepare_store(zoo.path, Path(tmp) / "store",
                                  StoreSettings(token_size=token_size, include_batchnorm=True),
                                  progress=False)
            fast_n, slow_n = (320, 20) if args.quick else (3200, 60)
            if name == "ResNet-18":
                fast_n, slow_n = (320, 3) if args.quick else (1600, 10)
            fast = time_store(store, window, fast_n)
            slow = time_retokenize(zoo, store, window, slow_n)
            per_ckpt = (store.path / "tokens.npy").stat().st_size / len(store.rows)
            ckpt = zoo.checkpoint_path(*store.rows[0][:2]).stat().st_size
            one_copy = store.manifest.num_tokens * store.manifest.token_size * 4
            copies = per_ckpt / one_copy  # the .npy header is the only excess
            print(f"{name:10s} {store.manifest.num_tokens:7d} {fast:12.1f} {slow:13.2f} "
                  f"{fast / slow:8.0f}× {per_ckpt:13,.0f} {ckpt:11,d} {copies:7.3f}")
    print("window: CNN-s 32 tokens, ResNet-18 256 tokens; permutation + multiplicative noise 0.1 "
          "in both paths; 2 threads")


if __name__ == "__main__":
    main()
