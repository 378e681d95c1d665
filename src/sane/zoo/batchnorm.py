"""Batch-norm conditioning (SANE §2): re-estimate the running statistics of a model whose
learned weights came from elsewhere (a sampled model), from a few batches of target data.

Only the batch-norm statistics change; every learned weight stays bit for bit as it was. The
statistics are a cumulative average over the batches (momentum None), not an exponential one,
so they do not depend on the batch-norm momentum the model was built with; every other module
(dropout included) runs in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

from sane.errors import ConfigError

BatchNorm = nn.modules.batchnorm._BatchNorm


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, BatchNorm) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def condition_batchnorm(
    model: nn.Module, images: torch.Tensor, *, batches: int = 10, batch_size: int = 64,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Reset and re-estimate ``model``'s batch-norm running statistics from ``batches``
    random batches of ``images [N, ...]``; returns ``model`` in eval mode."""
    if batches < 1 or batch_size < 2:
        raise ConfigError(f"batch-norm conditioning needs batches >= 1 and batch_size >= 2, got "
                          f"{batches} and {batch_size}")
    norms = [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]
    model.eval()
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        order = torch.randperm(len(images), generator=generator)
        for b in range(batches):  # consecutive batches of one shuffled order, wrapping around
            model(images[order[(torch.arange(batch_size) + b * batch_size) % len(images)]])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return model
