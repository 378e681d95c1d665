"""Fine-tuning a model while tracking its accuracy (SANE §5.2's evaluation of sampled
models): Adam, cross-entropy, ``epochs`` passes over the training data in a seeded order (the
same order for every model), accuracy on each evaluation split after each epoch (epoch 0 =
the model as given). Nothing is chosen from these accuracies (the number of epochs is fixed
beforehand), so the test split may be among them. The stage over a samples directory is
:mod:`sane.stages.finetune`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sane.zoo.evaluation import accuracy


def train_and_track(net: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                    evaluate: Mapping[str, tuple[torch.Tensor, torch.Tensor]], *, epochs: int,
                    lr: float, batch_size: int, seed: int) -> dict[str, list[float]]:
    """Train ``net`` in place; per split of ``evaluate`` (name -> inputs, labels), its
    accuracy before training and after each epoch."""
    x, y = train
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    history = {name: [accuracy(net, *split)] for name, split in evaluate.items()}
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + epoch))
        net.train()
        for i in range(0, len(y), batch_size):
            index = order[i : i + batch_size]
            if len(index) < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                      for m in net.modules()):
                continue  # batch norm cannot train on a batch of one
            loss = F.cross_entropy(net(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        for name, split in evaluate.items():
            history[name].append(accuracy(net, *split))
    return history
