"""``sane sample``: new models for a zoo's task from a pretrained SANE, end to end.

Prompts are the first ``prompts`` training-split models of the store (in id order) at one
stored epoch; the target is the zoo's own architecture and dataset: sampled models are scored
by accuracy on the dataset's validation split and batch norm is conditioned on its training
images. The prompt models are scored the same way, for comparison.

::

    OUT/
      sample_000.safetensors ...   the kept models, best first (state dicts, aligned frame)
      samples.json                 settings (a new task's dataset, None for the zoo's),
                                   prompts, scores of samples and prompts, rounds
      samples.md                   the same as a table
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sane import atomic
from sane.data import Dataset, load_dataset
from sane.downstream.batchnorm import condition_batchnorm, has_batchnorm
from sane.downstream.sampling import Samples, SamplingConfig, Target, sample_models
from sane.errors import ConfigError
from sane.model import SANE
from sane.train.pretraining import run_store
from sane.weights.store import TokenStore
from sane.zoo import ArchConfig, Zoo, build_model
from sane.zoo.architectures import input_shape


def target_data(store: TokenStore, dataset: str | None = None, root: str | None = None
                ) -> tuple[ArchConfig, Dataset]:
    """The zoo's architecture and the data of its task: the zoo's own dataset or, for a new
    task, ``dataset`` (read from ``root``), resized and converted to the architecture's
    input; it must have as many classes."""
    arch = ArchConfig.from_dict(store.meta["architecture"])
    if dataset is None:
        info = Zoo.open(store.meta["zoo"]).dataset
        ds = load_dataset(info["name"], info.get("root"), size=info.get("size"),
                          grayscale=info.get("grayscale", False),
                          val_fraction=info.get("val_fraction", 1 / 6), seed=info.get("seed", 0))
    else:
        expected = input_shape(arch)
        mismatch = (f"dataset {dataset!r} cannot feed the zoo's {arch.name}, which takes "
                    f"{arch.num_classes} classes of inputs {list(expected)}")
        try:
            ds = load_dataset(dataset, root, size=None if len(expected) == 2
                              else arch.input_size, grayscale=arch.in_channels == 1)
        except ConfigError as error:
            raise ConfigError(f"{mismatch}: {error}") from error
        if ds.input_shape != expected or ds.num_classes != arch.num_classes:
            raise ConfigError(f"{mismatch}: it gives {ds.num_classes} classes of inputs "
                              f"{list(ds.input_shape)}")
    return arch, ds


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """The fraction of ``x`` that ``net`` (in eval mode) classifies as ``y``."""
    net.eval()
    with torch.no_grad():
        hits = sum(int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                   for i in range(0, len(y), batch_size))
    return hits / len(y)


def zoo_target(store: TokenStore, *, dataset: str | None = None, root: str | None = None
               ) -> Target:
    """The zoo's architecture as a sampling target, scored by validation accuracy on the data
    of :func:`target_data`."""
    arch, ds = target_data(store, dataset, root)
    return Target(build=lambda: build_model(arch, seed=0),
                  score=lambda net: accuracy(net, ds.val.x, ds.val.y), images=ds.train.x)


def prompt_rows(store: TokenStore, count: int, epoch: int | None) -> list[int]:
    """Store rows of the first ``count`` training-split models at ``epoch`` (default: each
    model's last stored epoch)."""
    by_model: dict[str, dict[int, int]] = {}
    for row in store.split_rows("train").tolist():
        model_id, e, _ = store.rows[row]
        by_model.setdefault(model_id, {})[e] = row
    rows = []
    for model_id in sorted(by_model):
        epochs = by_model[model_id]
        chosen = max(epochs) if epoch is None else epoch
        if chosen in epochs:
            rows.append(epochs[chosen])
        if len(rows) == count:
            return rows
    which = "in the store" if epoch is None else f"with epoch {epoch} in the store"
    raise ConfigError(f"{store.path}: {len(rows)} training models are {which}; {count} "
                      "prompts were asked for")


def sample_from_run(
    run: str | Path, out: str | Path, *, store: str | Path | None = None, prompts: int = 5,
    prompt_epoch: int | None = None, config: SamplingConfig | None = None,
    dataset: str | None = None, root: str | None = None,
) -> Samples:
    """Sample models for the zoo of ``store`` (default: the run's) with the SANE in ``run``;
    for a new task, score them on ``dataset`` (see :func:`zoo_target`)."""
    config = config or SamplingConfig()
    model = SANE.from_pretrained(run)
    tokens = run_store(run, store)
    target = zoo_target(tokens, dataset=dataset, root=root)
    rows = [] if config.prior_std is not None else prompt_rows(tokens, prompts, prompt_epoch)
    prompt_tokens = torch.tensor(tokens.tokens[rows]) if rows else None
    samples = sample_models(model, prompt_tokens, tokens.positions, tokens.manifest,
                            tokens.standardization, target, config)
    prompt_scores = [_score_stored(tokens, row, target) for row in rows]

    out = Path(out)
    for i, state in enumerate(samples.states):
        atomic.save_tensors(out / f"sample_{i:03d}.safetensors", state)
    report: dict[str, Any] = {
        "run": str(Path(run).resolve()), "store": str(tokens.path.resolve()),
        "config": dataclasses.asdict(config), "dataset": dataset, "root": root,
        "prompts": [{"model": tokens.rows[r][0], "epoch": tokens.rows[r][1], "score": s}
                    for r, s in zip(rows, prompt_scores)],
        "samples": [{"file": f"sample_{i:03d}.safetensors", "score": s}
                    for i, s in enumerate(samples.scores)],
        "rounds": samples.rounds,
    }
    atomic.write_json(out / "samples.json", report)
    atomic.write_text(out / "samples.md", _markdown(report))
    return samples


def _score_stored(store: TokenStore, row: int, target: Target) -> float:
    net = target.build()
    net.load_state_dict(store.state_dict(row))
    if has_batchnorm(net) and not store.settings.include_batchnorm:
        condition_batchnorm(net, target.images, generator=torch.Generator().manual_seed(row))
    return float(target.score(net.eval()))


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Sampled models: validation accuracy", "",
             "| round | mean | std | best | mean of kept |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['round']} | {r['mean']:.4f} | {r['std']:.4f} | {r['best']:.4f} | "
              f"{r['kept_mean']:.4f} |" for r in report["rounds"]]
    lines += ["", "| model | validation accuracy |", "|---|---:|"]
    lines += [f"| {s['file']} | {s['score']:.4f} |" for s in report["samples"]]
    lines += [f"| prompt {p['model']} (epoch {p['epoch']}) | {p['score']:.4f} |"
              for p in report["prompts"]]
    return "\n".join(lines) + "\n"
