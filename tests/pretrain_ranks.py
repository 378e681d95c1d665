"""Run by ``torchrun`` in tests/test_distributed.py: pretrain, then save this rank's weights.

``python pretrain_ranks.py STORE RUN WEIGHTS_DIR EPOCHS [CRASH_EPOCH]``: pretrains the tiny
config of the test on STORE into RUN and writes ``WEIGHTS_DIR/rank-<r>.safetensors``; with
CRASH_EPOCH, every rank is interrupted at the second step of that epoch (a crash). With
``SLOW=P0,P1`` in the environment, precision is ``auto`` and rank r's steps in precision Pr
time 100 s slower; each rank writes the precision it trains in to
``WEIGHTS_DIR/precision-<r>.txt``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sane.train import PretrainConfig, WindowSampler, pretrain, pretraining


def config(epochs: int, precision: str = "fp32") -> PretrainConfig:
    return PretrainConfig(preset="tiny", epochs=epochs, batch_size=8, windows_per_checkpoint=1,
                          precision=precision,
                          model={"d_model": 32, "n_layers": 1}, fidelity_models=2)


def slow_down(precision: str, weights: Path) -> None:
    """Steps in ``precision`` time 100 s slower; the resolved precision goes to a file."""
    timed, resolve = pretraining._timed_step, pretraining._resolve_precision

    def slower(model, optimizer, batch, config, device):
        seconds = timed(model, optimizer, batch, config, device)
        return seconds + 100 * (config.precision == precision)

    def recorded(*args):
        config, measured = resolve(*args)
        weights.mkdir(parents=True, exist_ok=True)
        (weights / f"precision-{os.environ['RANK']}.txt").write_text(config.precision)
        return config, measured

    pretraining._timed_step, pretraining._resolve_precision = slower, recorded


def crash_at(epoch_to_crash: int) -> None:
    original = WindowSampler.epoch

    def epoch(self, number):
        for step, batch in enumerate(original(self, number)):
            if number == epoch_to_crash and step == 1:
                raise SystemExit(3)
            yield batch

    WindowSampler.epoch = epoch


if __name__ == "__main__":
    torch.set_num_threads(1)
    store, run, weights, epochs = sys.argv[1:5]
    if len(sys.argv) > 5:
        crash_at(int(sys.argv[5]))
    slow = os.environ.get("SLOW")
    if slow:
        slow_down(slow.split(",")[int(os.environ["RANK"])], Path(weights))
    precision = "auto" if slow else "fp32"
    model = pretrain(store, run, config(int(epochs), precision), progress=False).model
    Path(weights).mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(Path(weights) / f"rank-{os.environ['RANK']}.safetensors"))
