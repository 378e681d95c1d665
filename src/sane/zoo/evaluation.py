"""What a zoo's models are measured on: the zoo's own data, and classification accuracy."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from sane.data import Dataset, load_dataset
from sane.zoo.storage import Zoo


def zoo_data(zoo: Zoo) -> Dataset:
    """The dataset ``zoo`` was trained on, with its split, and the training split cut to the
    ``train_size`` images the zoo trained on (all of them when it used all)."""
    info = zoo.dataset
    ds = load_dataset(info["name"], info.get("root"), size=info.get("size"),
                      grayscale=info.get("grayscale", False),
                      val_fraction=info.get("val_fraction", 1 / 6), seed=info.get("seed", 0))
    return dataclasses.replace(ds, train=ds.train.head(info.get("train_size")))


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """The fraction of ``x`` that ``net`` (in eval mode) classifies as ``y``."""
    net.eval()
    with torch.no_grad():
        hits = sum(int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                   for i in range(0, len(y), batch_size))
    return hits / len(y)
