"""``sane sample``: new models for a task from a pretrained SANE, end to end.

Prompts are training models of the store SANE was pretrained on, or models of a zoo of
another architecture (:mod:`sane.stages.prompts`). Each prompt architecture (a
hyperparameter zoo mixes activations and dropout) is sampled on its own, and its samples
have that architecture. Sampled models are scored by accuracy on the task's validation
split, batch norm conditioned on its training images. The prompt models are scored the same
way, and so are the memorization baselines (:mod:`sane.downstream.memorization`).

::

    OUT/
      sample_000.safetensors ...   the kept models, best first within each architecture
                                   (state dicts in the aligned frame, keys of their own
                                   architecture: they load into ``build_model(arch)``)
      samples.json                 the request (run, store or prompt zoo, prompts, sampling
                                   config, a new task's dataset: None for the zoo's), per
                                   architecture:
                                   rounds and memorization controls;
                                   prompts[] and samples[] with score, architecture index,
                                   nearest prompt, distance and agreement
      samples.md                   the same as tables, with a plain verdict per architecture
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sane import atomic, markdown
from sane.data import Dataset
from sane.downstream.memorization import memorization_controls
from sane.downstream.sampling import (
    SamplingConfig,
    Target,
    load_state,
    sample_models,
    score_state,
)
from sane.errors import ConfigError, FormatError
from sane.model import SANE
from sane.model.sane import inference_precision, usable_device
from sane.stages.prompts import request_prompts
from sane.train.run_dir import run_store
from sane.zoo import ArchConfig, build_model
from sane.zoo.evaluation import accuracy
from sane.zoo.layout import as_architecture


@dataclass(frozen=True)
class SampleResult:
    """What a sampling request computed (the content of ``samples.json``): the ``request``;
    per prompt architecture (``architectures``) its index, settings, per-round statistics
    (``rounds``) and memorization controls; the ``prompts`` (model, epoch, architecture,
    score) and the kept ``samples`` (file, architecture, score, nearest prompt, distance,
    agreement)."""

    request: dict[str, Any]
    architectures: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    samples: list[dict[str, Any]]

    @classmethod
    def load(cls, out: str | Path) -> SampleResult:
        """The result in a ``sane sample`` output directory."""
        file = Path(out) / "samples.json"
        if not file.is_file():
            raise FormatError(f"{out} holds no sampled models: samples.json not found "
                              "(run `sane sample RUN --out DIR` first)")
        return cls.from_dict(atomic.read_json(file), str(file))

    @classmethod
    def from_dict(cls, d: Any, where: str = "samples") -> SampleResult:
        try:
            return cls(dict(d["request"]), list(d["architectures"]), list(d["prompts"]),
                       list(d["samples"]))
        except (KeyError, TypeError) as error:
            raise FormatError(f"{where}: malformed sampling result ({error!r})") from error

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def kept_mean(self) -> float:
        """Mean score of the kept samples."""
        return _mean([s["score"] for s in self.samples])

    @property
    def prompt_mean(self) -> float:
        """Mean score of the prompts."""
        return _mean([p["score"] for p in self.prompts])

    @property
    def draws_mean(self) -> float:
        """Mean score of all draws of the last round, before selection (over architectures)."""
        return _mean([g["rounds"][-1]["mean"] for g in self.architectures])

    def baseline_mean(self, name: str) -> float:
        """Mean score of the memorization baseline ``name`` over every architecture (NaN when
        none was computed)."""
        return _mean([x for g in self.architectures
                      for x in g["memorization"]["baselines"][name]["scores"]])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def zoo_target(arch: ArchConfig, data: Dataset) -> Target:
    """Architecture ``arch`` as a sampling target, scored by validation accuracy on ``data``,
    batch norm conditioned on its training images."""
    return Target(build=lambda: build_model(arch, seed=0),
                  score=lambda net: accuracy(net, data.val.x, data.val.y), images=data.train.x)


def sample_from_run(
    run: str | Path, out: str | Path, *, store: str | Path | None = None, prompts: int = 5,
    prompt_epoch: int | None = None, best_prompts: bool = False,
    config: SamplingConfig | None = None, dataset: str | None = None, root: str | None = None,
    prompts_from: str | Path | None = None, device: str = "cpu", precision: str = "auto",
) -> SampleResult:
    """Sample models with the SANE in ``run`` around ``prompts`` prompt models: training
    models of ``store`` (default: the run's), scored on its zoo's task or on ``dataset``
    (read from ``root``); or, with ``prompts_from``, models of a zoo of another
    architecture, scored on that zoo's task (:mod:`sane.stages.prompts`). The SANE computes on
    ``device`` in ``precision`` (:meth:`sane.model.SANE.from_pretrained`). Prompts of several
    architectures (activations, dropout...) are sampled per architecture: a sample has its
    prompts' architecture. Writes ``out`` (see the module docstring) and returns what it
    wrote; an ``out`` that holds the result of the same request is returned as it is."""
    config = config or SamplingConfig()
    out = Path(out)
    if prompts_from is not None and (store is not None or dataset is not None):
        raise ConfigError("prompts from a zoo of the target architecture are scored on that "
                          "zoo's task: give --prompts-from without --store or --dataset")
    request = {"run": str(Path(run).resolve()), "store": None,
               "prompts": prompts, "prompt_epoch": prompt_epoch, "best_prompts": best_prompts,
               "config": dataclasses.asdict(config), "dataset": dataset, "root": root}
    if prompts_from is None:
        request["store"] = str(run_store(run, store).path.resolve())
    else:  # recorded only when given: requests of earlier versions stay the same
        request["prompts_from"] = str(Path(prompts_from).resolve())
    precision = inference_precision(precision, usable_device(device))
    if precision != "fp32":  # recorded only when it changes the results, like prompts_from
        request["precision"] = precision
    if (out / "samples.json").is_file():
        done = SampleResult.load(out)
        if done.request == request:
            table = _markdown(done)  # this version's report of the same result
            if not (out / "samples.md").is_file() or (out / "samples.md").read_text() != table:
                atomic.write_text(out / "samples.md", table)
            return done
    model = SANE.from_pretrained(run, device=device, precision=precision)
    chosen = request_prompts(request)
    report: dict[str, Any] = {"request": request, "architectures": [], "prompts": [],
                              "samples": []}
    for arch_index, group in chosen.groups().items():
        arch = chosen.architectures[arch_index]
        target = zoo_target(arch, chosen.data)
        prompt_tokens = None if config.prior_std is not None else chosen.tokens[group]
        samples = sample_models(model, prompt_tokens, chosen.positions, chosen.tokenizer,
                                dataclasses.replace(target, fresh=chosen.fresh), config)
        generator = torch.Generator().manual_seed(config.seed)
        prompt_states = [chosen.states[i] for i in group]
        prompt_scores = [score_state(state, target, config.bn_batches, generator)
                         for state in prompt_states]
        controls = memorization_controls(
            samples.states, prompt_states, chosen.tokenizer.manifest.tokenized_keys(),
            load=lambda state, t=target: load_state(t.build(), state),
            score=lambda state, t=target, g=generator: score_state(dict(state), t,
                                                                   config.bn_batches, g),
            inputs=chosen.data.val.x, candidates=math.ceil(config.samples * config.rounds
                                                           / config.keep), seed=config.seed)
        first = len(report["samples"])
        for i, state in enumerate(samples.states):
            atomic.save_tensors(out / f"sample_{first + i:03d}.safetensors",
                                as_architecture(arch, state))
        report["prompts"] += [{"model": chosen.ids[i][0], "epoch": chosen.ids[i][1],
                               "architecture": arch_index, "score": s}
                              for i, s in zip(group, prompt_scores)]
        report["samples"] += [{"file": f"sample_{first + i:03d}.safetensors",
                               "architecture": arch_index, "score": s,
                               "nearest_prompt": chosen.ids[group[n]][0], "distance": d,
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
    result = SampleResult.from_dict(report)
    atomic.write_json(out / "samples.json", result.to_dict())
    atomic.write_text(out / "samples.md", _markdown(result))
    return result


def _markdown(result: SampleResult) -> str:
    lines = ["# Sampled models: validation accuracy", ""]
    for group in result.architectures:
        index, arch = group["index"], group["architecture"]
        samples = [s for s in result.samples if s["architecture"] == index]
        prompts = [p for p in result.prompts if p["architecture"] == index]
        memo = group["memorization"]
        lines += [f"## {arch['name']}, {arch['activation']}, dropout {arch['dropout']}", "",
                  markdown.table(["round", "noise std", "mean", "std", "best", "mean of kept"],
                                 [[r["round"], r["noise_std"], r["mean"], r["std"], r["best"],
                                   r["kept_mean"]] for r in group["rounds"]]), "",
                  markdown.table(
                      ["model", "validation accuracy", "nearest prompt", "L2 distance to it",
                       "agreement with it"],
                      [[s["file"], s["score"], s["nearest_prompt"], f"{s['distance']:.3f}",
                        f"{s['agreement']:.3f}"] for s in samples]
                      + [[f"prompt {p['model']} (epoch {p['epoch']})", p["score"], None, None,
                          None] for p in prompts]),
                  "", _verdict(samples, prompts, memo, group["rounds"][-1]["mean"]), ""]
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
