"""Run by ``torchrun`` in tests/test_distributed.py: pretrain, then save this rank's weights.

``python pretrain_ranks.py STORE RUN WEIGHTS_DIR EPOCHS [CRASH_EPOCH]``: pretrains the tiny
config of the test on STORE into RUN and writes ``WEIGHTS_DIR/rank-<r>.safetensors``; with
CRASH_EPOCH, every rank is interrupted at the second step of that epoch (a crash).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sane.train import PretrainConfig, WindowSampler, pretrain


def config(epochs: int) -> PretrainConfig:
    return PretrainConfig(preset="tiny", epochs=epochs, batch_size=8, windows_per_checkpoint=1,
                          precision="fp32",
                          model={"d_model": 32, "n_layers": 1}, fidelity_models=2)


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
    model = pretrain(store, run, config(int(epochs)), progress=False).model
    Path(weights).mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(Path(weights) / f"rank-{os.environ['RANK']}.safetensors"))
