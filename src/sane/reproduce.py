"""``sane reproduce``: the paper's protocols end to end on a zoo generated here.

Stages (each resumes from what is on disk, so an interrupted run continues):

1. train a population (``OUT/zoo``) and summarize it;
2. tokenize it into an aligned token store, diverged checkpoints left out (``OUT/store``);
3. pretrain SANE on it (``OUT/sane``);
4. property prediction (SANE §5.1): test accuracy, epoch and generalization gap from SANE
   embeddings against the ``W`` and ``s(W)`` baselines (``OUT/probes``);
5. model generation (SANE §5.2, Table 3): KDE30, subsampling, bootstrapping, and
   bootstrapping from a Gaussian prior, zero-shot and fine-tuned, against training from
   scratch and fine-tuned prompts, with memorization controls (``OUT/samples-*``,
   ``OUT/generation.png``);
6. the layer analysis against WeightWatcher-style metrics (SANE §4, ``OUT/analysis``).

``OUT/report.md`` collects every table and links the figures; ``OUT/reproduce.json`` holds the
resolved scale. Scales: ``quick`` (a digits hyperparameter zoo of 40 CNN-s, a ``cpu`` SANE;
minutes on a laptop CPU), ``fmnist`` (the 100-model Fashion-MNIST hyperparameter zoo of
Model Zoos at 10 epochs on 10,000 images, a small SANE) and ``fmnist-seed`` (Table 3's
setting: a 100-model Fashion-MNIST seed zoo, SANE pretrained on the first half of the epochs,
prompts from the last of them).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sane.errors import ConfigError

# This module imports no torch at the top (`sane --help` lists the scales): the stages are
# imported inside run_reproduction.


@dataclass(frozen=True)
class Scale:
    """The sizes of one reproduction (see the module docstring). ``store_epochs`` (first,
    last) selects the checkpoints SANE is pretrained on (None: all); prompts come from each
    model's last stored epoch; ``finetune_epochs`` of fine-tuning follow sampling."""

    zoo_preset: str
    models: int
    epochs: int
    train_size: int | None
    max_abs: float
    pretrain_preset: str
    pretrain_epochs: int
    batch_size: int
    prompts: int
    samples: int
    keep: int
    rounds: int
    prior_std: float
    store_epochs: tuple[int, int] | None = None
    finetune_epochs: int = 5


SCALES = {
    "quick": Scale("digits-cnn-s-hyp", models=40, epochs=10, train_size=None, max_abs=100.0,
                   pretrain_preset="cpu", pretrain_epochs=30, batch_size=16, prompts=5,
                   samples=20, keep=5, rounds=3, prior_std=1.0),
    "fmnist": Scale("fmnist-cnn-s-hyp", models=100, epochs=10, train_size=10_000,
                    max_abs=100.0, pretrain_preset="small", pretrain_epochs=50, batch_size=32,
                    prompts=10, samples=50, keep=10, rounds=3, prior_std=1.0),
    "fmnist-seed": Scale("fmnist-cnn-s-seed-fast", models=100, epochs=10, train_size=10_000,
                         max_abs=100.0, pretrain_preset="cpu", pretrain_epochs=100,
                         batch_size=32, prompts=10, samples=50, keep=10, rounds=3,
                         prior_std=1.0, store_epochs=(1, 5)),
}


def run_reproduction(out: str | Path, scale: Scale, *, progress: bool = True) -> Path:
    """Run every stage at ``scale`` into ``out``; returns the path of the report."""
    from sane import atomic
    from sane.downstream.analysis import analyze
    from sane.downstream.probes import markdown_table
    from sane.downstream.property_prediction import predict_properties
    from sane.train import PretrainConfig, pretrain
    from sane.train.fidelity import fidelity_markdown
    from sane.weights.store import StoreSettings, prepare_store
    from sane.zoo import load_config, train_population
    from sane.zoo.summary import plot_accuracy, summary_table

    out = Path(out)
    settings = out / "reproduce.json"
    resolved = json.loads(json.dumps(dataclasses.asdict(scale)))
    if settings.is_file() and atomic.read_json(settings) != resolved:
        raise ConfigError(f"{out} holds a reproduction at another scale (see {settings}); "
                          "choose another --out or remove it")
    atomic.write_json(settings, resolved)
    print(f"1/6 training {scale.models} models ({scale.zoo_preset}, {scale.epochs} epochs)")
    config = load_config(scale.zoo_preset, models=scale.models, epochs=scale.epochs,
                         train_size=scale.train_size)
    zoo = train_population(config, out / "zoo", progress=progress)
    plot_accuracy(zoo, zoo.path / "accuracy.png")
    print("2/6 aligning and tokenizing the zoo")
    epochs = (None if scale.store_epochs is None
              else tuple(range(scale.store_epochs[0], scale.store_epochs[1] + 1)))
    store = prepare_store(zoo.path, out / "store",
                          StoreSettings(align=True, max_abs=scale.max_abs, epochs=epochs),
                          progress=progress)
    print("3/6 pretraining SANE")
    sane = pretrain(store.path, out / "sane",
                    PretrainConfig(preset=scale.pretrain_preset, epochs=scale.pretrain_epochs,
                                   batch_size=scale.batch_size), progress=progress)
    history = atomic.read_json(out / "sane" / "history.json")
    last = history[-1]
    print("4/6 predicting model properties")
    probes = markdown_table(predict_properties(out / "sane", out / "probes", progress=progress))
    print("5/6 sampling models and fine-tuning them (SANE Table 3)")
    generation = sample_and_finetune(out, store, scale)
    print("6/6 layer analysis")
    analyze(out / "sane", out / "analysis", progress=progress)
    selected = ("every epoch" if scale.store_epochs is None
                else f"epochs {scale.store_epochs[0]}-{scale.store_epochs[1]}")
    report = "\n".join([
        f"# sane reproduce: {scale.zoo_preset}", "",
        "## Zoo", "", summary_table(zoo), "", "![test accuracy](zoo/accuracy.png)", "",
        "## Token store", "",
        f"{len(store.rows)} checkpoints ({selected}) × {store.manifest.num_tokens} tokens × "
        f"{store.manifest.token_size} values; left out: {store.meta['skipped_non_finite']} "
        f"non-finite, {store.meta['skipped_above_max_abs']} above |w| = {scale.max_abs}.", "",
        "## SANE pretraining", "",
        f"{scale.pretrain_epochs} epochs ({sum(r['seconds'] for r in history) / 60:.1f} min), "
        f"{sane.config.d_model}-wide, {sane.config.n_layers}+{sane.config.n_layers} blocks, "
        f"d_z {sane.config.d_latent}: window R² {last['train_r2']:.3f} on training windows, "
        f"{last.get('val_r2', float('nan')):.3f} on validation windows "
        "([sane/report.md](sane/report.md), ![loss](sane/loss.png)).", "",
        "Reconstruction by function (whole models, each at its last stored epoch):", "",
        fidelity_markdown(last["fidelity"]), "",
        "## Property prediction (SANE Table 1): test R² (validation R²)", "", probes, "",
        generation,
        "## Layer analysis (SANE §4)", "",
        (out / "analysis" / "analysis.md").read_text().split("\n", 2)[2].strip(), "",
        "![layer analysis](analysis/analysis.png)", "",
    ])
    atomic.write_text(out / "report.md", report)
    print(f"report: {out / 'report.md'}")
    return out / "report.md"


def sample_and_finetune(out: Path, store: Any, scale: Scale) -> str:
    """SANE Table 3: models sampled by KDE30, subsampling (SUB), bootstrapping (BOOT) and
    bootstrapping from a Gaussian prior (GAUSS), zero-shot and fine-tuned, against training
    from scratch and fine-tuning the prompts; with the memorization controls. Returns the
    report's Markdown section."""
    from sane.downstream.finetuning import accuracy_table, finetune_samples, plot_accuracy_curves
    from sane.downstream.generation import sample_from_run
    from sane.downstream.sampling import SamplingConfig

    train_models = len({store.rows[r][0] for r in store.split_rows("train").tolist()})
    kde30 = max(1, math.ceil(0.3 * train_models))
    protocols = {
        "SANE_KDE30": (kde30, True, SamplingConfig(samples=scale.keep, keep=scale.keep)),
        "SANE_SUB": (scale.prompts, False, SamplingConfig(samples=scale.samples,
                                                          keep=scale.keep)),
        "SANE_BOOT": (scale.prompts, False, SamplingConfig(
            samples=scale.samples, keep=scale.keep, rounds=scale.rounds)),
        "SANE_GAUSS": (scale.prompts, False, SamplingConfig(
            samples=scale.samples, keep=scale.keep, rounds=scale.rounds,
            prior_std=scale.prior_std)),
    }
    tuned: dict[str, dict[str, list[list[float]]]] = {}
    memorization = ["| protocol | kept: mean | all draws: mean | prompts: mean | kept / prompts "
                    "| distance to nearest prompt | prompts apart | agreement | noised prompts | "
                    "prompt averages |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (prompts, best, config) in protocols.items():
        folder = out / ("samples-" + name.split("_")[1].lower())
        report = sample_from_run(out / "sane", folder, prompts=prompts, best_prompts=best,
                                 config=config)
        tuned[name] = finetune_samples(folder, epochs=scale.finetune_epochs,
                                       baselines=name == "SANE_SUB")["accuracy"]
        memorization.append(_memorization_row(name, report))
    groups = {"training from scratch": tuned["SANE_SUB"]["random init"],
              "fine-tuned prompts": tuned["SANE_SUB"]["prompts"],
              **{name: result["sampled"] for name, result in tuned.items()}}
    epochs = sorted({0, 1, scale.finetune_epochs})
    plot_accuracy_curves(groups, out / "generation.png")
    return "\n".join([
        "## Model generation (SANE Table 3): validation accuracy, mean ± std", "",
        f"Prompts: each model's last pretraining epoch; SUB keeps the {scale.keep} best of "
        f"{scale.samples} draws around the first {scale.prompts} training models, BOOT "
        f"repeats that for {scale.rounds} rounds, GAUSS starts BOOT from N(0, "
        f"{scale.prior_std}²) latents, KDE30 draws {scale.keep} models around the best 30 % "
        f"({kde30}) of the training models. Every group is fine-tuned the same way for "
        f"{scale.finetune_epochs} epochs (Adam 1e-3, batch 32); training from scratch starts "
        "from as many random initializations.", "",
        accuracy_table(groups, epochs), "", "![fine-tuning](generation.png)", "",
        "### Memorization controls (zero-shot)", "",
        "Distances are L2 in aligned weight space; agreement is the share of validation "
        "inputs on which a sample and its nearest prompt predict the same class; the "
        "baselines are scored like the samples, each of their models the best of as many "
        "candidates as the sampler drew per kept model (see `samples-*/samples.md`).", "",
        *memorization, "",
    ])


def _memorization_row(name: str, report: dict[str, Any]) -> str:
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    kept = mean([s["score"] for s in report["samples"]])
    draws = mean([g["rounds"][-1]["mean"] for g in report["architectures"]])
    prompts = mean([p["score"] for p in report["prompts"]])
    apart = [g["memorization"]["prompt_distance"] for g in report["architectures"]]
    cells = [f"{kept:.3f}", f"{draws:.3f}", f"{prompts:.3f}", f"{kept / prompts:.2f}×",
             f"{mean([s['distance'] for s in report['samples']]):.2f}",
             f"{mean([a for a in apart if a is not None]):.2f}",
             f"{mean([s['agreement'] for s in report['samples']]):.1%}"]
    for baseline in ("noised prompts", "prompt averages"):
        scores = [x for g in report["architectures"]
                  for x in g["memorization"]["baselines"][baseline]["scores"]]
        verdict = "" if not scores else (" (beaten)" if kept > mean(scores) else " (not beaten)")
        cells.append(f"{mean(scores):.3f}{verdict}")
    return f"| {name} | " + " | ".join(cells) + " |"
