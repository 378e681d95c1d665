"""``sane finetune``: fine-tune the models of a ``sane sample`` directory (SANE §5.2), against
the same architecture from random initializations and against the directory's own prompt
models, all trained the same way (:func:`sane.downstream.finetuning.train_and_track`).
Batch-norm models train with their conditioned statistics as the starting point. Accuracy
is tracked on the selection and the report split of the samples; tables report the latter.

::

    SAMPLES/finetune.json   settings and, per split and group, every model's accuracy per epoch
    SAMPLES/finetune.md     mean ± std report-split accuracy per epoch and group
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
from sane.settings import from_table
from sane.stages.prompts import request_prompts
from sane.stages.sample import SampleResult
from sane.zoo import ArchConfig, build_model
from sane.zoo.batchnorm import condition_batchnorm, has_batchnorm


@dataclass(frozen=True)
class FinetuneResult:
    """What fine-tuning a samples directory computed (the content of ``finetune.json``):
    ``samples`` the directory, the ``settings`` (with a hash of the models fine-tuned),
    ``report_split`` and ``splits[split][group][model][epoch]``, accuracy per split and group
    ("sampled", "prompts", "random init"), epoch 0 before fine-tuning."""

    samples: str
    settings: dict[str, Any]
    report_split: str
    splits: dict[str, dict[str, list[list[float]]]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def accuracy(self) -> dict[str, list[list[float]]]:
        """Per group, every model's accuracy per epoch on the report split."""
        return self.splits[self.report_split]


def finetune_samples(samples: str | Path, *, epochs: int = 5, lr: float = 1e-3,
                     batch_size: int = 32, seed: int = 0, prompts: bool = True,
                     random_init: bool = True) -> FinetuneResult:
    """Fine-tune the models of a ``sane sample`` output directory and, with ``prompts``, the
    prompts it names, with ``random_init`` as many randomly initialized models as it keeps;
    writes ``finetune.json`` and ``finetune.md``. A directory fine-tuned before with the same
    settings is returned as it is."""
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError("fine-tuning needs epochs >= 1, lr > 0 and batch_size >= 1")
    samples = Path(samples)
    report = SampleResult.load(samples)
    # The models fine-tuned, not the report around them: a re-report of the same samples
    # reuses the result.
    models = json.dumps([report.request.to_dict(), [[s.file, s.selection] for s in report.samples],
                         [[p.model, p.epoch] for p in report.prompts]])
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                "prompts": prompts, "random_init": random_init,
                "models": hashlib.sha256(models.encode()).hexdigest()}
    done = samples / "finetune.json"
    if done.is_file():
        try:
            result = from_table(FinetuneResult, atomic.read_json(done), str(done))
            if result.settings == settings:
                return result
        except ConfigError:  # an earlier version's file: fine-tune again
            pass
    chosen = request_prompts(report.request)
    ds = chosen.data
    arch_of = {a.index: ArchConfig.from_dict(a.architecture) for a in report.architectures}
    splits = {report.selection_split: ds.split(report.selection_split),
              report.report_split: ds.split(report.report_split)}
    groups: dict[str, list[dict[str, list[float]]]] = {
        "sampled": [], "prompts": [], "random init": []}

    def track(group: str, net: nn.Module) -> None:
        groups[group].append(train_and_track(
            net, (ds.train.x, ds.train.y), {n: (s.x, s.y) for n, s in splits.items()},
            epochs=epochs, lr=lr, batch_size=batch_size, seed=seed))

    for entry in report.samples:
        net = build_model(arch_of[entry.architecture])
        file = samples / entry.file
        load_checked(net, read_state_dict(file), str(file))
        track("sampled", net)
    index = {(m, e): i for i, (m, e) in enumerate(chosen.ids)}
    for prompt in report.prompts if prompts else []:
        net = chosen.network(index[prompt.model, prompt.epoch])
        if has_batchnorm(net):  # conditioned as when it was scored beside the samples
            condition_batchnorm(net, ds.train.x, generator=torch.Generator().manual_seed(seed))
        track("prompts", net)
    for i, entry in enumerate(report.samples if random_init else []):
        track("random init", build_model(arch_of[entry.architecture], seed=seed + i))
    result = FinetuneResult(str(samples.resolve()), settings, report.report_split, {
        split: {group: [run[split] for run in runs] for group, runs in groups.items() if runs}
        for split in splits})
    atomic.write_json(done, result.to_dict())
    atomic.write_text(samples / "finetune.md",
                      f"# Fine-tuning: {result.report_split} accuracy, mean ± std over the "
                      "models of each group\n\n"
                      + accuracy_table(result.accuracy, range(epochs + 1)) + "\n")
    return result


def accuracy_table(groups: dict[str, list[list[float]]], epochs: Iterable[int]) -> str:
    """A Markdown table, one row per group (``groups[name][model][epoch]``) and one column
    per epoch of ``epochs``: the mean ± standard deviation over the group's models."""
    epochs = list(epochs)
    rows = []
    for name, runs in groups.items():
        cells = [f"{name} ({len(runs)})"]
        for e in epochs:
            values = torch.tensor([r[e] for r in runs], dtype=torch.float64)
            std = values.std().item() if len(values) > 1 else 0.0
            cells.append(f"{values.mean().item():.3f} ± {std:.3f}")
        rows.append(cells)
    return markdown.table(["group (models)", *(f"epoch {e}" for e in epochs)], rows)


def plot_accuracy_curves(groups: dict[str, list[list[float]]], path: str | Path, *,
                         split: str = "test") -> None:
    """Mean accuracy on ``split`` per fine-tuning epoch of each group with a ± std band, as
    a PNG."""
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
    ax.set(xlabel="fine-tuning epoch", ylabel=f"{split} accuracy",
           title="sampled models, prompts and random initializations")
    ax.legend()
    fig.tight_layout()
    atomic.atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
