"""Fine-tuning evaluation (SANE §5.2): how sampled models train on, against the same
architecture from a random initialization and against the prompt (zoo) models.

Every model trains the same way: Adam, cross-entropy, ``epochs`` passes over the target's
training split in a seeded order (the same order for every model), validation accuracy after
each epoch (epoch 0 = as sampled). Batch-norm models train with their conditioned statistics as
the starting point.

::

    SAMPLES/finetune.json   settings and, per group, every model's accuracy per epoch
    SAMPLES/finetune.md     mean ± std validation accuracy per epoch and group
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from sane import atomic
from sane.downstream.generation import target_data
from sane.errors import ConfigError, FormatError
from sane.model.sane import load_checked
from sane.train.pretraining import run_store
from sane.zoo import ArchConfig, build_model
from sane.zoo.batchnorm import condition_batchnorm, has_batchnorm
from sane.zoo.evaluation import accuracy


def train_and_track(net: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                    val: tuple[torch.Tensor, torch.Tensor], *, epochs: int, lr: float,
                    batch_size: int, seed: int) -> list[float]:
    """Train ``net`` in place; validation accuracy before training and after each epoch."""
    x, y = train
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    history = [accuracy(net, *val)]
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
        history.append(accuracy(net, *val))
    return history


def finetune_samples(samples: str | Path, *, epochs: int = 5, lr: float = 1e-3,
                     batch_size: int = 32, seed: int = 0, baselines: bool = True
                     ) -> dict[str, Any]:
    """Fine-tune the models of a ``sane sample`` output directory and, with ``baselines``,
    the prompts it names and as many randomly initialized models; writes ``finetune.json``
    and ``finetune.md``. A directory fine-tuned before with the same settings is returned
    as it is."""
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError("fine-tuning needs epochs >= 1, lr > 0 and batch_size >= 1")
    samples = Path(samples)
    file = samples / "samples.json"
    if not file.is_file():
        raise FormatError(f"{samples} holds no sampled models: samples.json not found "
                          "(run `sane sample RUN --out DIR` first)")
    report = atomic.read_json(file)
    # The models fine-tuned, not the report around them: a re-report of the same samples
    # reuses the result.
    models = json.dumps([report["request"], [[s["file"], s["score"]] for s in report["samples"]],
                         [[p["model"], p["epoch"]] for p in report["prompts"]]])
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                "baselines": baselines, "models": hashlib.sha256(models.encode()).hexdigest()}
    done = samples / "finetune.json"
    if done.is_file():
        result = atomic.read_json(done)
        if isinstance(result, dict) and result.get("settings") == settings:
            return result
    request = report["request"]
    store = run_store(request["run"], request["store"])
    ds = target_data(store, request["dataset"], request["root"])
    archs = [ArchConfig.from_dict(a["architecture"]) for a in report["architectures"]]
    arch_of = {a["index"]: arch for a, arch in zip(report["architectures"], archs)}
    train, val = (ds.train.x, ds.train.y), (ds.val.x, ds.val.y)

    def track(net: nn.Module) -> list[float]:
        return train_and_track(net, train, val, epochs=epochs, lr=lr, batch_size=batch_size,
                               seed=seed)

    groups: dict[str, list[list[float]]] = {"sampled": [], "random init": [], "prompts": []}
    for entry in report["samples"]:
        net = build_model(arch_of[entry["architecture"]])
        load_checked(net, load_file(str(samples / entry["file"])), str(samples / entry["file"]))
        groups["sampled"].append(track(net))
    for i, entry in enumerate(report["samples"] if baselines else []):
        groups["random init"].append(track(build_model(arch_of[entry["architecture"]],
                                                       seed=seed + i)))
    rows = {(m, e): r for r, (m, e, _) in enumerate(store.rows)}
    for prompt in report["prompts"] if baselines else []:
        net = store.model(rows[prompt["model"], prompt["epoch"]])
        if has_batchnorm(net) and not store.settings.include_batchnorm:
            condition_batchnorm(net, ds.train.x, generator=torch.Generator().manual_seed(seed))
        groups["prompts"].append(track(net))
    groups = {name: runs for name, runs in groups.items() if runs}
    result = {"samples": str(samples.resolve()), "settings": settings, "accuracy": groups}
    atomic.write_json(done, result)
    atomic.write_text(samples / "finetune.md",
                      "# Fine-tuning: validation accuracy, mean ± std over the models of each "
                      "group\n\n" + accuracy_table(groups, range(epochs + 1)) + "\n")
    return result


def accuracy_table(groups: dict[str, list[list[float]]], epochs: Iterable[int]) -> str:
    """A Markdown table, one row per epoch in ``epochs`` and one column per group: the mean ±
    standard deviation of the group's accuracies (``groups[name][model][epoch]``)."""
    lines = ["| epoch | " + " | ".join(f"{g} ({len(r)})" for g, r in groups.items()) + " |",
             "|---:|" + "---:|" * len(groups)]
    for e in epochs:
        cells = []
        for runs in groups.values():
            values = torch.tensor([r[e] for r in runs], dtype=torch.float64)
            std = values.std().item() if len(values) > 1 else 0.0
            cells.append(f"{values.mean().item():.3f} ± {std:.3f}")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
