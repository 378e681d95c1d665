"""``sane finetune``: fine-tune the models of a ``sane sample`` directory (SANE §5.2), against
the same architecture from random initializations and against the prompt (zoo) models, all
trained the same way (:func:`sane.downstream.finetuning.train_and_track`). Batch-norm models
train with their conditioned statistics as the starting point.

::

    SAMPLES/finetune.json   settings and, per group, every model's accuracy per epoch
    SAMPLES/finetune.md     mean ± std validation accuracy per epoch and group
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sane import atomic, markdown
from sane.checkpoints import read_state_dict
from sane.downstream.finetuning import train_and_track
from sane.errors import ConfigError
from sane.model.sane import load_checked
from sane.stages.prompts import request_prompts
from sane.stages.sample import SampleResult
from sane.zoo import ArchConfig, build_model
from sane.zoo.batchnorm import condition_batchnorm, has_batchnorm


@dataclass(frozen=True)
class FinetuneResult:
    """What fine-tuning a samples directory computed (the content of ``finetune.json``):
    ``samples`` the directory, the ``settings`` (with a hash of the models fine-tuned) and
    ``accuracy[group][model][epoch]``, validation accuracy per group ("sampled", and with
    baselines "random init" and "prompts"), epoch 0 before fine-tuning."""

    samples: str
    settings: dict[str, Any]
    accuracy: dict[str, list[list[float]]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> FinetuneResult:
        return cls(str(d["samples"]), dict(d["settings"]), dict(d["accuracy"]))


def finetune_samples(samples: str | Path, *, epochs: int = 5, lr: float = 1e-3,
                     batch_size: int = 32, seed: int = 0, baselines: bool = True
                     ) -> FinetuneResult:
    """Fine-tune the models of a ``sane sample`` output directory and, with ``baselines``,
    the prompts it names and as many randomly initialized models; writes ``finetune.json``
    and ``finetune.md``. A directory fine-tuned before with the same settings is returned
    as it is."""
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError("fine-tuning needs epochs >= 1, lr > 0 and batch_size >= 1")
    samples = Path(samples)
    report = SampleResult.load(samples)
    # The models fine-tuned, not the report around them: a re-report of the same samples
    # reuses the result.
    models = json.dumps([report.request, [[s["file"], s["score"]] for s in report.samples],
                         [[p["model"], p["epoch"]] for p in report.prompts]])
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                "baselines": baselines, "models": hashlib.sha256(models.encode()).hexdigest()}
    done = samples / "finetune.json"
    if done.is_file():
        result = atomic.read_json(done)
        if isinstance(result, dict) and result.get("settings") == settings:
            return FinetuneResult.from_dict(result)
    prompts = request_prompts(report.request)
    ds = prompts.data
    arch_of = {a["index"]: ArchConfig.from_dict(a["architecture"])
               for a in report.architectures}
    train, val = (ds.train.x, ds.train.y), (ds.val.x, ds.val.y)

    def track(net: nn.Module) -> list[float]:
        return train_and_track(net, train, val, epochs=epochs, lr=lr, batch_size=batch_size,
                               seed=seed)

    groups: dict[str, list[list[float]]] = {"sampled": [], "random init": [], "prompts": []}
    for entry in report.samples:
        net = build_model(arch_of[entry["architecture"]])
        file = samples / entry["file"]
        load_checked(net, read_state_dict(file), str(file))
        groups["sampled"].append(track(net))
    for i, entry in enumerate(report.samples if baselines else []):
        groups["random init"].append(track(build_model(arch_of[entry["architecture"]],
                                                       seed=seed + i)))
    index = {(m, e): i for i, (m, e) in enumerate(prompts.ids)}
    for prompt in report.prompts if baselines else []:
        net = prompts.network(index[prompt["model"], prompt["epoch"]])
        if has_batchnorm(net):  # conditioned as when it was scored beside the samples
            condition_batchnorm(net, ds.train.x, generator=torch.Generator().manual_seed(seed))
        groups["prompts"].append(track(net))
    groups = {name: runs for name, runs in groups.items() if runs}
    result = FinetuneResult(str(samples.resolve()), settings, groups)
    atomic.write_json(done, result.to_dict())
    atomic.write_text(samples / "finetune.md",
                      "# Fine-tuning: validation accuracy, mean ± std over the models of each "
                      "group\n\n" + accuracy_table(groups, range(epochs + 1)) + "\n")
    return result


def accuracy_table(groups: dict[str, list[list[float]]], epochs: Iterable[int]) -> str:
    """A Markdown table, one row per epoch in ``epochs`` and one column per group: the mean ±
    standard deviation of the group's accuracies (``groups[name][model][epoch]``)."""
    rows = []
    for e in epochs:
        cells: list[Any] = [e]
        for runs in groups.values():
            values = torch.tensor([r[e] for r in runs], dtype=torch.float64)
            std = values.std().item() if len(values) > 1 else 0.0
            cells.append(f"{values.mean().item():.3f} ± {std:.3f}")
        rows.append(cells)
    return markdown.table(["epoch", *(f"{g} ({len(r)})" for g, r in groups.items())], rows,
                          text_columns=0)


def plot_accuracy_curves(groups: dict[str, list[list[float]]], path: str | Path) -> None:
    """Mean accuracy per fine-tuning epoch of each group with a ± std band, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, runs in groups.items():
        values = torch.tensor(runs, dtype=torch.float64)  # [models, epochs + 1]
        mean = values.mean(0)
        std = values.std(0) if len(runs) > 1 else torch.zeros_like(mean)
        epochs = range(values.shape[1])
        ax.plot(epochs, mean, marker="o", label=name)
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.15)
    ax.set(xlabel="fine-tuning epoch", ylabel="validation accuracy",
           title="sampled models, prompts and random initializations")
    ax.legend()
    fig.tight_layout()
    atomic.atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
