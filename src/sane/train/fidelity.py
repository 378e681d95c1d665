"""Reconstruction judged by function: whole models through SANE and back, against their
originals.

A window loss can look fine while decoded models sit at chance, so pretraining and ``sane
probe`` report what sampling needs: every chosen checkpoint is encoded and decoded whole
(haloed, noise-free, in eval mode), and compared with its original

- by R² over its real (unpadded) standardized values, for the whole model and per layer;
- by test accuracy: the decoded weights in the model's own architecture (batch norm, when
  it is kept out of the tokens, conditioned on training images for both) against the original.

A CNN-s keeps about 0.9× its accuracy from a whole-model R² of about 0.98 (measured with
Gaussian noise in token space), so the two figures say different things.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sane import markdown
from sane.data import Dataset
from sane.errors import ConfigError, FormatError
from sane.model.sane import SANE
from sane.weights.store import TokenStore
from sane.zoo.batchnorm import condition_batchnorm, has_batchnorm
from sane.zoo.evaluation import accuracy, zoo_data
from sane.zoo.storage import Zoo


@dataclass(frozen=True)
class SplitFidelity:
    """One split's figures over ``models`` checkpoints: ``r2`` over all their real values,
    ``layer_r2`` per layer of the token manifest; with data, the mean test ``accuracy`` of the
    originals and of the decoded models, and ``ratio`` = decoded / original."""

    models: int
    r2: float
    layer_r2: list[float]
    accuracy: float | None = None
    decoded_accuracy: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.accuracy is None or self.decoded_accuracy is None or self.accuracy == 0:
            return None
        return self.decoded_accuracy / self.accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"models": self.models, "r2": self.r2, "layer_r2": self.layer_r2,
                "accuracy": self.accuracy, "decoded_accuracy": self.decoded_accuracy,
                "ratio": self.ratio}


def fidelity_rows(store: TokenStore, split: str, limit: int) -> list[int]:
    """Rows of the last stored epoch of the first ``limit`` models of ``split`` (id order)."""
    last: dict[str, tuple[int, int]] = {}
    for row in store.split_rows(split).tolist():
        model_id, epoch, _ = store.rows[row]
        if model_id not in last or epoch > last[model_id][0]:
            last[model_id] = (epoch, row)
    return [last[m][1] for m in sorted(last)[:limit]]


@torch.no_grad()
def split_fidelity(model: SANE, store: TokenStore, rows: list[int], data: Dataset | None = None,
                   *, batch_size: int = 16) -> SplitFidelity:
    """The figures of the checkpoints ``rows`` (see the module docstring); accuracy only when
    ``data`` is given."""
    if not rows:
        raise ValueError("split_fidelity needs at least one row")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    positions = store.positions.to(device)
    mask = store.mask
    layers = store.manifest.layers
    sse, sst = np.zeros(len(layers)), np.zeros(len(layers))
    original_acc, decoded_acc = [], []
    for first in range(0, len(rows), batch_size):
        part = rows[first : first + batch_size]
        tokens = torch.from_numpy(np.array(store.tokens[part])).to(device)
        decoded = model.decode_sequence(model.encode_sequence(tokens, positions), positions)
        decoded, tokens = decoded.float().cpu(), tokens.cpu()
        for i, layer in enumerate(layers):
            span = slice(layer.start, layer.stop)
            real = mask[span]
            target = tokens[:, span][:, real].double()
            sse[i] += float(((decoded[:, span][:, real].double() - target) ** 2).sum())
            sst[i] += float(((target - target.mean(dim=1, keepdim=True)) ** 2).sum())
        if data is not None:
            for row, sequence in zip(part, decoded):
                original_acc.append(_accuracy(store, row, None, data))
                decoded_acc.append(_accuracy(store, row, sequence, data))
    model.train(was_training)
    return SplitFidelity(
        models=len(rows), r2=float(1 - sse.sum() / max(sst.sum(), 1e-30)),
        layer_r2=[float(1 - e / max(t, 1e-30)) for e, t in zip(sse, sst)],
        accuracy=float(np.mean(original_acc)) if original_acc else None,
        decoded_accuracy=float(np.mean(decoded_acc)) if decoded_acc else None,
    )


def _accuracy(store: TokenStore, row: int, tokens: torch.Tensor | None, data: Dataset) -> float:
    """Test accuracy of ``row``'s model, or of the standardized ``tokens [N, d_t]`` decoded
    into its architecture."""
    net = store.model(row, None if tokens is None else store.tokenizer.decode(tokens))
    if has_batchnorm(net) and not store.settings.include_batchnorm:
        condition_batchnorm(net, data.train.x, generator=torch.Generator().manual_seed(row))
    return accuracy(net, data.test.x, data.test.y)


def reconstruction_report(model: SANE, store: TokenStore,
                          splits: tuple[str, ...] = ("train", "val"), *, limit: int = 16,
                          with_accuracy: bool = True) -> dict[str, Any]:
    """:class:`SplitFidelity` dictionaries of up to ``limit`` models per split, by split; with
    accuracy when ``with_accuracy`` and the zoo's data can be read (else a ``note`` says
    why not)."""
    data, report = None, {}
    if with_accuracy:
        try:
            data = zoo_data(Zoo.open(store.zoo_path))
        except (ConfigError, FormatError) as error:
            report["note"] = f"accuracy not measured: {error}"
    for split in splits:
        rows = fidelity_rows(store, split, limit)
        if rows:
            report[split] = split_fidelity(model, store, rows, data).to_dict()
    return report


def fidelity_markdown(fidelity: dict[str, Any]) -> str:
    """A Markdown table of :class:`SplitFidelity` dictionaries by split (``fidelity[split]``),
    and their per-layer R²."""
    splits = [s for s in ("train", "val", "test") if s in fidelity]
    lines = [markdown.table(
        ["split", "models", "whole-model R²", "test accuracy: original", "decoded", "ratio"],
        [[split, fidelity[split]["models"], fidelity[split]["r2"],
          *("–" if fidelity[split][k] is None else fidelity[split][k]
            for k in ("accuracy", "decoded_accuracy", "ratio"))] for split in splits])]
    if splits:
        layers = len(fidelity[splits[0]]["layer_r2"])
        lines += ["", markdown.table(["split", *(f"layer {i}" for i in range(layers))],
                                     [[split, *fidelity[split]["layer_r2"]] for split in splits],
                                     digits=3)]
    if "note" in fidelity:
        lines += ["", fidelity["note"]]
    return "\n".join(lines)
