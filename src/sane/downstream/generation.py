"""``sane sample``: new models for a zoo's task from a pretrained SANE, end to end.

Prompts are the first ``prompts`` training-split models of the store (in id order, or the
most accurate) at one stored epoch. Each prompt architecture (a hyperparameter zoo mixes
activations and dropout) is sampled on its own, and its samples have that architecture. The
target is the zoo's dataset (or a new one): sampled models are scored by accuracy on the
dataset's validation split, batch norm conditioned on its training images. The prompt models
are scored the same way, and so are the memorization baselines
(:mod:`sane.downstream.memorization`).

::

    OUT/
      sample_000.safetensors ...   the kept models, best first within each architecture
                                   (state dicts in the aligned frame, keys of their own
                                   architecture: they load into ``build_model(arch)``)
      samples.json                 the request (run, store, prompts, sampling config, a new
                                   task's dataset: None for the zoo's), per architecture:
                                   rounds and memorization controls;
                                   prompts[] and samples[] with score, architecture index,
                                   nearest prompt, distance and agreement
      samples.md                   the same as tables, with a plain verdict per architecture
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from sane import atomic
from sane.data import Dataset, load_dataset
from sane.downstream.memorization import memorization_controls
from sane.downstream.sampling import (
    SamplingConfig,
    Target,
    load_state,
    sample_models,
    score_state,
)
from sane.errors import ConfigError
from sane.model import SANE
from sane.train.pretraining import run_store
from sane.weights.store import TokenStore
from sane.zoo import ArchConfig, Zoo, build_model
from sane.zoo.architectures import input_shape
from sane.zoo.evaluation import accuracy, zoo_data
from sane.zoo.layout import as_architecture


def target_data(store: TokenStore, dataset: str | None = None, root: str | None = None
                ) -> Dataset:
    """The data of the zoo's task: the zoo's own dataset (:func:`sane.zoo.evaluation.zoo_data`)
    or, for a new task, ``dataset`` (read from ``root``), resized and converted to the zoo's
    input; it must have as many classes."""
    if dataset is None:
        return zoo_data(Zoo.open(store.meta["zoo"]))
    arch = store.architectures[0]
    expected = input_shape(arch)
    mismatch = (f"dataset {dataset!r} cannot feed the zoo's {arch.name}, which takes "
                f"{arch.num_classes} classes of inputs {list(expected)}")
    try:
        ds = load_dataset(dataset, root, size=None if len(expected) == 2 else arch.input_size,
                          grayscale=arch.in_channels == 1)
    except ConfigError as error:
        raise ConfigError(f"{mismatch}: {error}") from error
    if ds.input_shape != expected or ds.num_classes != arch.num_classes:
        raise ConfigError(f"{mismatch}: it gives {ds.num_classes} classes of inputs "
                          f"{list(ds.input_shape)}")
    return ds


def zoo_target(arch: ArchConfig, data: Dataset) -> Target:
    """Architecture ``arch`` as a sampling target, scored by validation accuracy on ``data``,
    batch norm conditioned on its training images."""
    return Target(build=lambda: build_model(arch, seed=0),
                  score=lambda net: accuracy(net, data.val.x, data.val.y), images=data.train.x)


def prompt_rows(store: TokenStore, count: int, epoch: int | None, *, best: bool = False
                ) -> list[int]:
    """Store rows of ``count`` training-split models at ``epoch`` (default: each model's last
    stored epoch): the first in id order, or with ``best`` those of highest test accuracy
    (the KDE30 protocol fits its KDE on the best 30 %)."""
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
    if len(rows) < count:
        which = "in the store" if epoch is None else f"with epoch {epoch} in the store"
        raise ConfigError(f"{store.path}: {len(rows)} training models are {which}; {count} "
                          "prompts were asked for")
    if best:
        accuracy = store.property("test_acc")
        rows = sorted(rows, key=lambda r: -accuracy[r])
    return rows[:count]


def sample_from_run(
    run: str | Path, out: str | Path, *, store: str | Path | None = None, prompts: int = 5,
    prompt_epoch: int | None = None, best_prompts: bool = False,
    config: SamplingConfig | None = None, dataset: str | None = None, root: str | None = None,
) -> dict[str, Any]:
    """Sample models for the zoo of ``store`` (default: the run's) with the SANE in ``run``
    around ``prompts`` training models (:func:`prompt_rows`); for a new task, score them on
    ``dataset`` (see :func:`target_data`). Prompts of several architectures (activations,
    dropout...) are sampled per architecture: a sample has its prompts' architecture. Writes
    ``out`` (see the module docstring) and returns the content of ``samples.json``; an
    ``out`` that holds the result of the same request is returned as it is."""
    config = config or SamplingConfig()
    out = Path(out)
    tokens = run_store(run, store)
    request = {"run": str(Path(run).resolve()), "store": str(tokens.path.resolve()),
               "prompts": prompts, "prompt_epoch": prompt_epoch, "best_prompts": best_prompts,
               "config": dataclasses.asdict(config), "dataset": dataset, "root": root}
    if (out / "samples.json").is_file():
        done = atomic.read_json(out / "samples.json")
        if isinstance(done, dict) and done.get("request") == request:
            table = _markdown(done)  # this version's report of the same result
            if not (out / "samples.md").is_file() or (out / "samples.md").read_text() != table:
                atomic.write_text(out / "samples.md", table)
            return done
    model = SANE.from_pretrained(run)
    data = target_data(tokens, dataset, root)
    rows = prompt_rows(tokens, prompts, prompt_epoch, best=best_prompts)
    groups: dict[int, list[int]] = {}
    for row in rows:
        groups.setdefault(tokens.row_architecture[row], []).append(row)

    report: dict[str, Any] = {"request": request, "architectures": [], "prompts": [],
                              "samples": []}
    for arch_index, group in groups.items():
        arch = tokens.architectures[arch_index]
        target = zoo_target(arch, data)
        prompt_tokens = None if config.prior_std is not None else torch.tensor(tokens.tokens[group])
        samples = sample_models(model, prompt_tokens, tokens.positions, tokens.codec, target,
                                config)
        generator = torch.Generator().manual_seed(config.seed)
        prompt_states = [tokens.state_dict(r) for r in group]
        prompt_scores = [score_state(state, target, config.bn_batches, generator)
                         for state in prompt_states]
        controls = memorization_controls(
            samples.states, prompt_states, tokens.manifest.tokenized_keys(),
            load=lambda state, t=target: load_state(t.build(), state),
            score=lambda state, t=target, g=generator: score_state(dict(state), t,
                                                                   config.bn_batches, g),
            inputs=data.val.x, candidates=math.ceil(config.samples * config.rounds
                                                    / config.keep), seed=config.seed)
        first = len(report["samples"])
        for i, state in enumerate(samples.states):
            atomic.save_tensors(out / f"sample_{first + i:03d}.safetensors",
                                as_architecture(arch, state))
        report["prompts"] += [{"model": tokens.rows[r][0], "epoch": tokens.rows[r][1],
                               "architecture": arch_index, "score": s}
                              for r, s in zip(group, prompt_scores)]
        report["samples"] += [{"file": f"sample_{first + i:03d}.safetensors",
                               "architecture": arch_index, "score": s,
                               "nearest_prompt": tokens.rows[group[n]][0], "distance": d,
                               "agreement": a}
                              for i, (s, n, d, a) in enumerate(zip(
                                  samples.scores, controls.nearest, controls.distance,
                                  controls.agreement))]
        report["architectures"].append({
            "index": arch_index, "architecture": arch.to_dict(), "rounds": samples.rounds,
            "memorization": controls.to_dict(samples.scores)})
    kept = {s["file"] for s in report["samples"]}
    for stale in out.glob("sample_*.safetensors"):  # left by an earlier, larger request
        if stale.name not in kept:
            stale.unlink()
    atomic.write_json(out / "samples.json", report)
    atomic.write_text(out / "samples.md", _markdown(report))
    return report


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Sampled models: validation accuracy", ""]
    for group in report["architectures"]:
        index, arch = group["index"], group["architecture"]
        samples = [s for s in report["samples"] if s["architecture"] == index]
        prompts = [p for p in report["prompts"] if p["architecture"] == index]
        memo = group["memorization"]
        lines += [f"## {arch['name']}, {arch['activation']}, dropout {arch['dropout']}", "",
                  "| round | noise std | mean | std | best | mean of kept |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['round']} | {r['noise_std']:.4f} | {r['mean']:.4f} | {r['std']:.4f} | "
                  f"{r['best']:.4f} | {r['kept_mean']:.4f} |" for r in group["rounds"]]
        lines += ["", "| model | validation accuracy | nearest prompt | L2 distance to it | "
                  "agreement with it |", "|---|---:|---|---:|---:|"]
        lines += [f"| {s['file']} | {s['score']:.4f} | {s['nearest_prompt']} | "
                  f"{s['distance']:.3f} | {s['agreement']:.3f} |" for s in samples]
        lines += [f"| prompt {p['model']} (epoch {p['epoch']}) | {p['score']:.4f} | | | |"
                  for p in prompts]
        lines += ["", _verdict(samples, prompts, memo, group["rounds"][-1]["mean"]), ""]
    return "\n".join(lines)


def _verdict(samples: list[dict[str, Any]], prompts: list[dict[str, Any]],
             memo: dict[str, Any], draws_mean: float) -> str:
    """One paragraph: kept samples against prompts and the memorization baselines (selected
    like the samples; the mean of all draws of the last round is given beside them)."""
    mean = sum(s["score"] for s in samples) / len(samples)
    prompt_mean = sum(p["score"] for p in prompts) / len(prompts)
    scale = ("" if memo["prompt_distance"] is None
             else f" (prompts lie {memo['prompt_distance']:.2f} apart)")
    parts = [f"Kept samples score {mean:.4f} on average against {prompt_mean:.4f} for the "
             f"prompts ({mean / prompt_mean:.2f}×); they lie "
             f"{sum(s['distance'] for s in samples) / len(samples):.2f} from their nearest "
             f"prompt{scale} and agree with it on "
             f"{sum(s['agreement'] for s in samples) / len(samples):.1%} of the inputs."]
    for name, baseline in memo["baselines"].items():
        if baseline["mean"] is None:
            parts.append(f"No {name} baseline (it needs two prompts).")
        else:
            verdict = "beat" if baseline["samples_beat_it"] else "do not beat"
            parts.append(f"SANE's kept samples {verdict} the {name} baseline "
                         f"({baseline['mean']:.4f}).")
    parts.append(f"Each baseline model is the best of as many candidates as the sampler drew "
                 f"per kept model; before selection, the last round's draws scored "
                 f"{draws_mean:.4f} on average.")
    return " ".join(parts)
