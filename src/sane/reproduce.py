"""``sane reproduce``: the paper's protocols end to end on a zoo generated here.

Stages (each resumes from what is on disk, so an interrupted run continues):

1. train a population (``OUT/zoo``) and summarize it;
2. tokenize it into an aligned token store, diverged checkpoints left out (``OUT/store``);
3. pretrain SANE on it (``OUT/sane``);
4. property prediction (SANE §5.1): test accuracy, epoch and generalization gap from SANE
   embeddings against the ``W`` and ``s(W)`` baselines (``OUT/probes``);
5. sampling (SANE §5.2): subsampling, bootstrapping, and bootstrapping from a Gaussian prior,
   against the prompt models themselves (``OUT/samples-*``);
6. the layer analysis against WeightWatcher-style metrics (SANE §4, ``OUT/analysis``).

``OUT/report.md`` collects every table and links the figures; ``OUT/reproduce.json`` holds the
resolved scale. Scales: ``quick`` (a digits hyperparameter zoo of 40 CNN-s, a tiny SANE;
minutes on a laptop CPU) and ``fmnist`` (the 100-model Fashion-MNIST hyperparameter zoo of
Model Zoos at 10 epochs on 10,000 images, a small SANE; about half an hour on 2 cores).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sane.errors import ConfigError

# This module imports no torch at the top (`sane --help` lists the scales): the stages are
# imported inside run_reproduction.


@dataclass(frozen=True)
class Scale:
    """The sizes of one reproduction (see the module docstring)."""

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


SCALES = {
    "quick": Scale("digits-cnn-s-hyp", models=40, epochs=10, train_size=None, max_abs=100.0,
                   pretrain_preset="tiny", pretrain_epochs=30, batch_size=16, prompts=5,
                   samples=20, keep=5, rounds=3, prior_std=1.0),
    "fmnist": Scale("fmnist-cnn-s-hyp", models=100, epochs=10, train_size=10_000,
                    max_abs=100.0, pretrain_preset="small", pretrain_epochs=50, batch_size=32,
                    prompts=10, samples=50, keep=10, rounds=3, prior_std=1.0),
}


def run_reproduction(out: str | Path, scale: Scale, *, progress: bool = True) -> Path:
    """Run every stage at ``scale`` into ``out``; returns the path of the report."""
    from sane import atomic
    from sane.downstream.analysis import analyze
    from sane.downstream.generation import sample_from_run
    from sane.downstream.probes import markdown_table
    from sane.downstream.property_prediction import predict_properties
    from sane.downstream.sampling import SamplingConfig
    from sane.train import PretrainConfig, pretrain
    from sane.weights.store import StoreSettings, prepare_store
    from sane.zoo import load_config, train_population
    from sane.zoo.summary import plot_accuracy, summary_table

    out = Path(out)
    settings = out / "reproduce.json"
    if settings.is_file() and atomic.read_json(settings) != dataclasses.asdict(scale):
        raise ConfigError(f"{out} holds a reproduction at another scale (see {settings}); "
                          "choose another --out or remove it")
    atomic.write_json(settings, dataclasses.asdict(scale))
    print(f"1/6 training {scale.models} models ({scale.zoo_preset}, {scale.epochs} epochs)")
    config = load_config(scale.zoo_preset, models=scale.models, epochs=scale.epochs,
                         train_size=scale.train_size)
    zoo = train_population(config, out / "zoo", progress=progress)
    plot_accuracy(zoo, zoo.path / "accuracy.png")
    print("2/6 aligning and tokenizing the zoo")
    store = prepare_store(zoo.path, out / "store",
                          StoreSettings(align=True, max_abs=scale.max_abs), progress=progress)
    print("3/6 pretraining SANE")
    sane = pretrain(store.path, out / "sane",
                    PretrainConfig(preset=scale.pretrain_preset, epochs=scale.pretrain_epochs,
                                   batch_size=scale.batch_size), progress=progress)
    last = atomic.read_json(out / "sane" / "history.json")[-1]
    print("4/6 predicting model properties")
    probes = markdown_table(predict_properties(out / "sane", out / "probes", progress=progress))
    print("5/6 sampling models")
    protocols = {
        "subsampling": SamplingConfig(samples=scale.samples, keep=scale.keep),
        "bootstrapping": SamplingConfig(samples=scale.samples, keep=scale.keep,
                                        rounds=scale.rounds),
        "prior + bootstrapping": SamplingConfig(samples=scale.samples, keep=scale.keep,
                                                rounds=scale.rounds, prior_std=scale.prior_std),
    }
    sampling = ["| protocol | kept: mean | kept: best | prompts: mean | prompts: best |",
                "|---|---:|---:|---:|---:|"]
    for name, sampling_config in protocols.items():
        folder = out / ("samples-" + name.replace(" + ", "-"))
        report = sample_from_run(out / "sane", folder, prompts=scale.prompts,
                                 config=sampling_config)
        scores = [s["score"] for s in report["samples"]]
        prompts = [p["score"] for p in report["prompts"]]
        prompt_cells = (f"{sum(prompts) / len(prompts):.3f} | {max(prompts):.3f}" if prompts
                        else "– | –")
        sampling.append(f"| {name} | {sum(scores) / len(scores):.3f} | "
                        f"{max(scores):.3f} | {prompt_cells} |")
    print("6/6 layer analysis")
    analyze(out / "sane", out / "analysis", progress=progress)
    report = "\n".join([
        f"# sane reproduce: {scale.zoo_preset}", "",
        "## Zoo", "", summary_table(zoo), "", "![test accuracy](zoo/accuracy.png)", "",
        "## Token store", "",
        f"{len(store.rows)} checkpoints × {store.manifest.num_tokens} tokens × "
        f"{store.manifest.token_size} values; left out: {store.meta['skipped_non_finite']} "
        f"non-finite, {store.meta['skipped_above_max_abs']} above |w| = {scale.max_abs}.", "",
        "## SANE pretraining", "",
        f"{scale.pretrain_epochs} epochs, {sane.config.d_model}-wide, "
        f"{sane.config.n_layers}+{sane.config.n_layers} blocks: reconstruction R² "
        f"{last['train_r2']:.3f} on training windows, {last.get('val_r2', float('nan')):.3f} "
        "on validation windows ([sane/report.md](sane/report.md), ![loss](sane/loss.png)).", "",
        "## Property prediction (SANE Table 1): test R² (validation R²)", "", probes, "",
        "## Sampling (SANE §5.2): validation accuracy of the kept models", "",
        *sampling, "",
        f"{scale.samples} models drawn per round, {scale.keep} kept; bootstrapping "
        f"{scale.rounds} rounds; the prior is N(0, {scale.prior_std}²); prompts: the first "
        f"{scale.prompts} training models at their last epoch.", "",
        "## Layer analysis (SANE §4)", "",
        (out / "analysis" / "analysis.md").read_text().split("\n", 2)[2].strip(), "",
        "![layer analysis](analysis/analysis.png)", "",
    ])
    atomic.write_text(out / "report.md", report)
    print(f"report: {out / 'report.md'}")
    return out / "report.md"
