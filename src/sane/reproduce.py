"""``sane reproduce`` and ``sane demo``: the paper's protocols end to end on a zoo generated
here.

Stages (each resumes from what is on disk, so an interrupted run continues; each returns a
result object that the report is written from):

1. train a population (``OUT/zoo``) and summarize it;
2. tokenize it into an aligned token store, diverged checkpoints left out (``OUT/store``);
3. pretrain SANE on it (``OUT/sane``);
4. property prediction (SANE §5.1): test accuracy, epoch and generalization gap from SANE
   embeddings against the ``W`` and ``s(W)`` baselines (``OUT/probes``);
5. model generation (SANE §5.2, Table 3): the scale's protocols among KDE30, subsampling,
   bootstrapping, and bootstrapping from a Gaussian prior, zero-shot and (when
   ``finetune_epochs`` > 0) fine-tuned, against training from scratch and fine-tuned prompts,
   with memorization controls (``OUT/samples-*``, ``OUT/generation.png``);
6. transfer to new architectures (SANE Tables 15-17 at CNN scale), when the scale names
   target architectures: for each, a few models trained briefly on the zoo's task are the
   prompts (``OUT/transfer-ARCH/zoo``); models sampled around them (SUB), the prompts and as
   many random initializations are fine-tuned the same way (``OUT/transfer-ARCH/samples``,
   ``OUT/transfer.png``);
7. the layer analysis against WeightWatcher-style metrics (SANE §4, ``OUT/analysis``), when
   the scale asks for it.

``OUT/report.md`` collects every table and links the figures; ``OUT/reproduce.json`` holds the
resolved scale. Scales: ``demo`` (``sane demo``: 34 CNN-s of one recipe on the embedded
digits, so that validation and test hold at least 5 models each, a ``cpu`` SANE, subsampling
only; 50 s on 2 idle cores), ``quick`` (a digits hyperparameter zoo of 40 CNN-s, every
protocol; minutes), ``fmnist`` (the 100-model Fashion-MNIST hyperparameter zoo of Model Zoos
at 10 epochs on 10,000 images, a small SANE)
and ``fmnist-seed`` (Table 3's setting: a 100-model Fashion-MNIST seed zoo, SANE pretrained
on the first half of the epochs, prompts from the last of them).
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
    model's last stored epoch; ``protocols`` are the sampling protocols run (of
    :data:`PROTOCOLS`); ``finetune_epochs`` of fine-tuning follow sampling (0: none);
    ``transfer`` names target architectures for the transfer stage, each prompted by
    ``transfer_prompts`` models of the ``transfer_preset`` recipe (default: the zoo's)
    trained for ``transfer_epochs`` epochs; every sampling runs with ``seeds`` seeds;
    ``frontier`` the bandwidths of the novelty–quality frontier (none: no frontier stage);
    ``analysis`` runs the layer analysis."""

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
    protocols: tuple[str, ...] = ("KDE30", "SUB", "BOOT", "GAUSS")
    transfer: tuple[str, ...] = ()
    transfer_prompts: int = 3
    transfer_epochs: int = 2
    transfer_preset: str | None = None
    seeds: int = 3
    frontier: tuple[float, ...] = ()
    analysis: bool = True

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise ConfigError(f"scale protocols must be some of {list(PROTOCOLS)}, got "
                              f"{list(self.protocols)}")
        if self.seeds < 1:
            raise ConfigError(f"scale seeds must be at least 1, got {self.seeds}")
        if len(set(self.frontier)) == 1:
            raise ConfigError(f"a frontier needs at least two bandwidths, got "
                              f"{list(self.frontier)}")
        if self.transfer and (self.finetune_epochs < 1 or self.transfer_prompts < 1
                              or self.transfer_epochs < 1):
            raise ConfigError("the transfer stage fine-tunes: it needs finetune_epochs, "
                              "transfer_prompts and transfer_epochs of at least 1")


PROTOCOLS = ("KDE30", "SUB", "BOOT", "GAUSS")
FRONTIER = (0.1, 0.25, 0.5, 1.0)
SCALES = {
    "demo": Scale("digits-cnn-s-seed", models=34, epochs=5, train_size=None, max_abs=100.0,
                  pretrain_preset="cpu", pretrain_epochs=6, batch_size=8, prompts=5,
                  samples=20, keep=5, rounds=1, prior_std=1.0, finetune_epochs=0,
                  protocols=("SUB",), seeds=2, analysis=False),
    "quick": Scale("digits-cnn-s-hyp", models=40, epochs=10, train_size=None, max_abs=100.0,
                   pretrain_preset="cpu", pretrain_epochs=30, batch_size=16, prompts=5,
                   samples=20, keep=5, rounds=3, prior_std=1.0,
                   transfer=("cnn_s_wide", "cnn_s_deep"), transfer_preset="digits-cnn-s-seed",
                   frontier=FRONTIER),
    "fmnist": Scale("fmnist-cnn-s-hyp", models=100, epochs=10, train_size=10_000,
                    max_abs=100.0, pretrain_preset="small", pretrain_epochs=50, batch_size=32,
                    prompts=10, samples=50, keep=10, rounds=3, prior_std=1.0),
    "fmnist-seed": Scale("fmnist-cnn-s-seed-fast", models=100, epochs=10, train_size=10_000,
                         max_abs=100.0, pretrain_preset="cpu", pretrain_epochs=100,
                         batch_size=32, prompts=10, samples=50, keep=10, rounds=3,
                         prior_std=1.0, store_epochs=(1, 5),
                         transfer=("cnn_s_wide", "cnn_s_deep"), frontier=FRONTIER),
}


def run_reproduction(out: str | Path, scale: Scale, *, progress: bool = True) -> Path:
    """Run every stage at ``scale`` into ``out``; returns the path of the report."""
    from sane import atomic
    from sane.stages.analyze import analyze
    from sane.stages.probe import predict_properties
    from sane.stages.reference import fit_reference
    from sane.train import PretrainConfig, pretrain
    from sane.weights.store import StoreSettings, prepare_store
    from sane.zoo import load_config, train_population
    from sane.zoo.summary import plot_accuracy

    out = Path(out)
    settings = out / "reproduce.json"
    resolved = json.loads(json.dumps(dataclasses.asdict(scale)))
    if settings.is_file() and atomic.read_json(settings) != resolved:
        raise ConfigError(f"{out} holds a reproduction at another scale (see {settings}); "
                          "choose another --out or remove it")
    atomic.write_json(settings, resolved)
    stages = 5 + bool(scale.transfer) + bool(scale.frontier) + scale.analysis
    print(f"1/{stages} training {scale.models} models ({scale.zoo_preset}, {scale.epochs} "
          "epochs)")
    config = load_config(scale.zoo_preset, models=scale.models, epochs=scale.epochs,
                         train_size=scale.train_size)
    zoo = train_population(config, out / "zoo", progress=progress)
    plot_accuracy(zoo, zoo.path / "accuracy.png")
    print(f"2/{stages} aligning and tokenizing the zoo")
    epochs = (None if scale.store_epochs is None
              else tuple(range(scale.store_epochs[0], scale.store_epochs[1] + 1)))
    store = prepare_store(zoo.path, out / "store",
                          StoreSettings(align=True, max_abs=scale.max_abs, epochs=epochs),
                          progress=progress)
    print(f"3/{stages} pretraining SANE")
    pretrained = pretrain(store.path, out / "sane",
                          PretrainConfig(preset=scale.pretrain_preset,
                                         epochs=scale.pretrain_epochs,
                                         batch_size=scale.batch_size), progress=progress)
    fit_reference(out / "sane", store=store.path)
    print(f"4/{stages} predicting model properties")
    probes = predict_properties(out / "sane", out / "probes", progress=progress)
    print(f"5/{stages} sampling models" + (" and fine-tuning them (SANE Table 3)"
                                           if scale.finetune_epochs else ""))
    generation = sample_and_finetune(out, store, scale)
    step = 5
    if scale.frontier:
        step += 1
        print(f"{step}/{stages} the novelty-quality frontier at bandwidths "
              f"{', '.join(f'{b:g}' for b in scale.frontier)}")
        generation += "\n" + novelty_quality_frontier(out, scale)
    if scale.transfer:
        step += 1
        print(f"{step}/{stages} sampling for new architectures: {', '.join(scale.transfer)}")
        generation += "\n" + transfer_to_new_architectures(out, scale, progress=progress)
    analysis = None
    if scale.analysis:
        print(f"{stages}/{stages} layer analysis")
        analysis = analyze(out / "sane", out / "analysis", progress=progress)
    report = write_report(out, scale, zoo, store, pretrained, probes, generation, analysis)
    print(f"report: {report}")
    return report


def write_report(out: Path, scale: Scale, zoo: Any, store: Any, pretrained: Any, probes: Any,
                 generation: str, analysis: Any) -> Path:
    """``OUT/report.md`` from the stages' results."""
    from sane import atomic
    from sane.stages.analyze import analysis_table
    from sane.train.fidelity import fidelity_markdown
    from sane.zoo.summary import summary_table

    model, history = pretrained.model.config, pretrained.history
    first, last = history[0], history[-1]
    selected = ("every epoch" if scale.store_epochs is None
                else f"epochs {scale.store_epochs[0]}-{scale.store_epochs[1]}")
    reference = store.meta["alignment_reference"]
    lines = [
        f"# sane {'demo' if scale == SCALES['demo'] else 'reproduce'}: {scale.zoo_preset}", "",
        "## Zoo", "", summary_table(zoo), "", "![test accuracy](zoo/accuracy.png)", "",
        "## Token store", "",
        f"{len(store.rows)} checkpoints ({selected}) × {store.manifest.num_tokens} tokens × "
        f"{store.manifest.token_size} values ({store.tokens.nbytes / 2**20:.1f} MiB, one copy "
        f"per checkpoint), aligned to model {reference} by weight matching; per split: "
        + ", ".join(f"{s} {len(store.split_rows(s))}" for s in ("train", "val", "test"))
        + f"; left out: {store.meta['skipped_non_finite']} non-finite, "
        f"{store.meta['skipped_above_max_abs']} above |w| = {scale.max_abs}.", "",
        "## SANE pretraining", "",
        f"{len(history)} epochs ({pretrained.seconds / 60:.1f} min), {model.d_model}-wide, "
        f"{model.n_layers}+{model.n_layers} blocks, d_z {model.d_latent}: validation "
        f"reconstruction loss {first.get('val_reconstruction', float('nan')):.4f} → "
        f"{last.get('val_reconstruction', float('nan')):.4f}; window R² "
        f"{last['train_r2']:.3f} on training windows, "
        f"{last.get('val_r2', float('nan')):.3f} on validation windows "
        "([sane/report.md](sane/report.md), ![loss](sane/loss.png)).", "",
        "Reconstruction by function (whole models, each at its last stored epoch):", "",
        fidelity_markdown(pretrained.fidelity), "",
        "## Property prediction (SANE Table 1)", "",
        "Linear probes fitted on the training split's checkpoints, their strength chosen on "
        "the validation split; test R² and Kendall τ with 95 % bootstrap intervals over test "
        "models ([probes/probes.md](probes/probes.md) adds classification probes, "
        "out-of-distribution flags and scatter plots).", "", "R²:", "", probes.markdown(), "",
        "Kendall τ:", "", probes.markdown("tau"), "",
        generation,
    ]
    if analysis is not None:
        lines += ["## Layer analysis (SANE §4)", "",
                  analysis_table(analysis["summary"]), "",
                  "![layer analysis](analysis/analysis.png)", ""]
    atomic.write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"


def sample_and_finetune(out: Path, store: Any, scale: Scale) -> str:
    """SANE Table 3 for the scale's protocols: models sampled by KDE30, subsampling (SUB),
    bootstrapping (BOOT) and bootstrapping from a Gaussian prior (GAUSS), each with
    ``scale.seeds`` sampling seeds, selected on validation and reported on test, against
    copy baselines of the same budget; the first seed's models fine-tuned beside each
    protocol's own prompts and training from scratch. Returns the report's Markdown
    section."""
    from sane.downstream.sampling import SamplingConfig
    from sane.stages.finetune import accuracy_table, finetune_samples, plot_accuracy_curves
    from sane.stages.sample import sample_from_run

    train_models = len({store.rows[r][0] for r in store.split_rows("train").tolist()})
    kde30 = max(1, math.ceil(0.3 * train_models))
    settings = {
        "KDE30": (kde30, True, SamplingConfig(samples=scale.keep, keep=scale.keep)),
        "SUB": (scale.prompts, False, SamplingConfig(samples=scale.samples, keep=scale.keep)),
        "BOOT": (scale.prompts, False, SamplingConfig(
            samples=scale.samples, keep=scale.keep, rounds=scale.rounds)),
        "GAUSS": (scale.prompts, False, SamplingConfig(
            samples=scale.samples, keep=scale.keep, rounds=scale.rounds,
            prior_std=scale.prior_std)),
    }
    sampled, tuned = {}, {}
    for name in scale.protocols:
        prompts, best, config = settings[name]
        folders = [out / f"samples-{name.lower()}" / f"seed-{seed}"
                   for seed in range(scale.seeds)]
        sampled[name] = [sample_from_run(out / "sane", folder, prompts=prompts,
                                         best_prompts=best,
                                         config=dataclasses.replace(config, seed=seed))
                         for seed, folder in enumerate(folders)]
        if scale.finetune_epochs:
            tuned[name] = finetune_samples(
                folders[0], epochs=scale.finetune_epochs, prompts=name != "GAUSS",
                random_init=name == scale.protocols[0]).accuracy
    described = {
        "KDE30": f"KDE30 draws {scale.keep} models around the {kde30} training models most "
                 "accurate on validation (the best 30 %)",
        "SUB": f"SUB keeps the {scale.keep} best of {scale.samples} draws around the first "
               f"{scale.prompts} training models",
        "BOOT": f"BOOT repeats SUB for {scale.rounds} rounds",
        "GAUSS": f"GAUSS starts BOOT from N(0, {scale.prior_std}²) latents (compared with "
                 "SUB's prompts)",
    }
    lines = ["## Model generation (SANE Table 3): selected on validation, reported on test", "",
             "Prompts: each model's last stored epoch; "
             + "; ".join(described[name] for name in scale.protocols)
             + f". Each protocol runs with {scale.seeds} sampling seed"
             + ("s" if scale.seeds > 1 else "") + "; every accuracy is on the test split.", ""]
    if tuned:
        groups = {"training from scratch": tuned[scale.protocols[0]]["random init"]}
        for name, result in tuned.items():
            if "prompts" in result:
                groups[f"{name} prompts"] = result["prompts"]
            groups[f"SANE_{name}"] = result["sampled"]
        plot_accuracy_curves(groups, out / "generation.png")
        lines += [f"Fine-tuned (the first seed's models; Adam 1e-3, batch 32, "
                  f"{scale.finetune_epochs} epochs; training from scratch starts from as many "
                  "random initializations). Test accuracy, mean ± std over the models:", "",
                  accuracy_table(groups, sorted({0, 1, scale.finetune_epochs})), "",
                  "![fine-tuning](generation.png)", ""]
    return "\n".join([*lines, "### Against copies of the prompts (zero-shot)", "",
                      copies_table({f"SANE_{n}": r for n, r in sampled.items()}), ""])


def novelty_quality_frontier(out: Path, scale: Scale) -> str:
    """SUB's setting (first seed) at each bandwidth of ``scale.frontier``
    (:func:`sane.stages.frontier.sample_frontier`, into ``OUT/frontier``); returns the
    report's Markdown section."""
    from sane.downstream.sampling import SamplingConfig
    from sane.stages.frontier import frontier_markdown, sample_frontier
    from sane.stages.sample import SampleResult

    frontier = sample_frontier(out / "sane", out / "frontier", scale.frontier,
                               config=SamplingConfig(samples=scale.samples, keep=scale.keep),
                               prompts=scale.prompts)
    first = SampleResult.load(out / "frontier" / f"bandwidth-{min(scale.frontier):g}")
    section = frontier_markdown(frontier, first).replace("# ", "### ", 1)
    return section.replace("](frontier.png)", "](frontier/frontier.png)")


def copies_table(results: dict[str, list[Any]]) -> str:
    """Per protocol (its :class:`~sane.stages.sample.SampleResult` per sampling seed): kept
    samples, their prompts and every copy baseline on the test split, the measures of
    novelty, and SANE − the strongest baseline with its 95 % interval over prompts, pooled
    over the seeds; with the sentence that explains the columns."""
    from sane import markdown
    from sane.downstream.copies import COPIES
    from sane.stages.sample import compare

    rows = []
    for name, runs in results.items():
        comparison = compare(runs)
        samples = [s for r in runs for s in r.samples]
        apart = _mean([a.prompt_distance for r in runs for a in r.architectures])
        spread = _mean([a.training_distance for r in runs for a in r.architectures])
        nearest = _mean([s.nearest_training for s in samples])
        verdict = comparison.verdict
        rows.append([
            name, f"{_mean([r.kept_mean for r in runs]):.3f}"
            + (f" ± {_std([r.kept_mean for r in runs]):.3f}" if len(runs) > 1 else ""),
            f"{_mean([r.last_draws_mean() for r in runs]):.3f}",
            f"{_mean([r.prompt_mean for r in runs]):.3f}",
            f"{_mean([s.distance for s in samples]):.2f}" + _bracket(apart),
            "" if nearest != nearest else f"{nearest:.2f}" + _bracket(spread),
            f"{_mean([s.agreement for s in samples]):.1%}",
            f"{_mean([s.error_overlap for s in samples]):.2f}",
            *(_number(_mean([r.baseline_mean(b) for r in runs])) for b in COPIES),
            "" if verdict is None else f"{verdict.difference:+.3f}"
            + ("" if verdict.interval is None
               else f" [{verdict.interval[0]:+.3f}, {verdict.interval[1]:+.3f}]")
            + f" vs {verdict.baseline}",
            "" if verdict is None else verdict.verdict])
    return "\n".join([
        "Test accuracy of the kept samples (mean ± sd over seeds), of all draws of the last "
        "round, of the prompts; the kept samples' L2 distance to their nearest prompt in "
        "aligned weight space (in brackets: between two prompts), to the nearest training model "
        "(in brackets: from a training model to its nearest other one, median), their "
        "agreement with the nearest prompt and the overlap of their errors with its (Jaccard); "
        "then the kept models of each copy baseline, which drew as many candidates per round "
        "at the same distances and kept as many by the same validation score; the difference "
        "to the strongest baseline (chosen on validation) with its 95 % interval over prompts "
        "(seeds pooled) and the verdict.", "",
        markdown.table(["protocol", "kept", "all draws", "prompts", "distance to prompt",
                        "to training model", "agreement", "error overlap", *COPIES,
                        "SANE − strongest [95 %]", "SANE's samples"], rows)])


def _number(value: float) -> str:
    """``value`` to 3 decimals, or empty where it is undefined (NaN)."""
    return "" if value != value else f"{value:.3f}"


def _bracket(value: float) -> str:
    """`` (value)`` to 2 decimals, or nothing where it is undefined (NaN)."""
    return "" if value != value else f" ({value:.2f})"


def _mean(values: list[Any]) -> float:
    values = [v for v in values if v is not None and v == v]
    return sum(values) / len(values) if values else float("nan")


def _std(values: list[float]) -> float:
    mean = _mean(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def transfer_to_new_architectures(out: Path, scale: Scale, *, progress: bool = True) -> str:
    """SANE Tables 15-17 at CNN scale: for each architecture of ``scale.transfer``,
    ``transfer_prompts`` models of it trained ``transfer_epochs`` epochs on the zoo's task
    prompt the SANE pretrained on the zoo (SUB: the ``keep`` best of ``samples`` draws, each
    of ``scale.seeds`` seeds), against copy baselines of the same budget; the first seed's
    models, the prompts and as many random initializations are fine-tuned the same way for
    ``finetune_epochs``. Returns the report's Markdown section."""
    from sane.downstream.sampling import SamplingConfig
    from sane.stages.finetune import accuracy_table, finetune_samples, plot_accuracy_curves
    from sane.stages.sample import sample_from_run
    from sane.zoo import load_config, train_population

    lines = ["## Transfer to new architectures (SANE Tables 15-17): test accuracy", "",
             f"For each target architecture, {scale.transfer_prompts} models "
             f"({scale.transfer_preset or scale.zoo_preset}) trained for "
             f"{scale.transfer_epochs} epochs on the zoo's task are the prompts; the SANE "
             "pretrained on the zoo sees their tokens at positions mapped into its own layout "
             f"(relative to each layer) and keeps the {scale.keep} best of {scale.samples} "
             f"draws by validation accuracy (SUB), with {scale.seeds} sampling seed"
             + ("s" if scale.seeds > 1 else "") + ". The first seed's models, the prompts and "
             f"{scale.keep} random initializations are fine-tuned the same way for "
             f"{scale.finetune_epochs} epochs (Adam 1e-3, batch 32). Mean ± std:", ""]
    curves, sampled = {}, {}
    for name in scale.transfer:
        folder = out / f"transfer-{name}"
        config = load_config(scale.transfer_preset or scale.zoo_preset,
                             models=scale.transfer_prompts,
                             epochs=scale.transfer_epochs, train_size=scale.train_size)
        config = dataclasses.replace(
            config, architecture=dataclasses.replace(config.architecture, name=name))
        zoo = train_population(config, folder / "zoo", progress=progress)
        folders = [folder / "samples" / f"seed-{seed}" for seed in range(scale.seeds)]
        sampled[name] = [
            sample_from_run(out / "sane", f, prompts=scale.transfer_prompts,
                            prompts_from=zoo.path,
                            config=SamplingConfig(samples=scale.samples, keep=scale.keep,
                                                  seed=seed))
            for seed, f in enumerate(folders)]
        tuned = finetune_samples(folders[0], epochs=scale.finetune_epochs).accuracy
        groups = {"random init": tuned["random init"], "prompts": tuned["prompts"],
                  "SANE sampled": tuned["sampled"]}
        curves |= {f"{name}: {group}": runs for group, runs in groups.items()}
        lines += [f"### {name}", "",
                  accuracy_table(groups, sorted({0, 1, scale.finetune_epochs})), ""]
    plot_accuracy_curves(curves, out / "transfer.png")
    return "\n".join([*lines, "![transfer](transfer.png)", "",
                      "### Against copies of the prompts (zero-shot)", "",
                      copies_table(sampled), ""])
