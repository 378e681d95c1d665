"""The main job end to end on the embedded digits data, in a minute on a laptop CPU.

Stages (each resumable: a rerun reuses what is on disk):

1. train the ``digits-cnn-s-seed`` population (12 CNN-s that differ only in their seed,
   5 epochs) into ``OUT/zoo``;
2. summarize it (Markdown table, accuracy plot ``OUT/zoo/accuracy.png``);
3. prepare an aligned token store in ``OUT/store`` (weight matching to one reference model,
   per-tensor standardization fitted on the training split);
4. draw augmented training windows from the store;
5. pretrain a SANE autoencoder of the ``cpu`` shape on the store into ``OUT/sane`` (a rerun
   resumes) and decode its training models whole to check that they still work;
6. predict test accuracy, epoch and generalization gap from SANE embeddings and from the
   ``W`` and ``s(W)`` baselines with linear probes (``OUT/probes``);
7. sample 20 new models around 5 prompt models, keep the 5 best, and compare them with the
   prompts and with the memorization baselines (``OUT/samples``).

``OUT/report.md`` collects what each stage produced.
"""

from __future__ import annotations

from pathlib import Path

from sane import atomic

# Under a minute on a laptop CPU: the "cpu" shape, batches of 8 windows.
DEMO_PRESET = "cpu"
DEMO_EPOCHS = 15


def run_demo(out: str | Path, *, progress: bool = True) -> Path:
    """Run the demo into ``out``; returns the path of the report."""
    from sane.downstream.generation import sample_from_run
    from sane.downstream.probes import markdown_table
    from sane.downstream.property_prediction import predict_properties
    from sane.downstream.sampling import SamplingConfig
    from sane.model import describe
    from sane.train import PretrainConfig, WindowConfig, WindowSampler, pretrain
    from sane.weights.store import StoreSettings, prepare_store
    from sane.zoo import load_config, train_population
    from sane.zoo.summary import plot_accuracy, summary_table

    out = Path(out)
    print("1/7 training the digits-cnn-s-seed population")
    zoo = train_population(load_config("digits-cnn-s-seed"), out / "zoo", progress=progress)
    print("2/7 summarizing the zoo")
    table = summary_table(zoo)
    plot_accuracy(zoo, zoo.path / "accuracy.png")
    print(table)
    print("3/7 tokenizing and aligning every checkpoint into a token store")
    store = prepare_store(zoo.path, out / "store", StoreSettings(align=True), progress=progress)
    m = store.manifest
    print("4/7 drawing augmented training windows")
    config = WindowConfig(window_size=16, batch_size=8, views=2, multiplicative_noise=0.1)
    batch = next(WindowSampler(store, "train", config, seed=0).epoch(0))
    print("5/7 pretraining a SANE autoencoder on the token store")
    sane = pretrain(store.path, out / "sane",
                    PretrainConfig(preset=DEMO_PRESET, epochs=DEMO_EPOCHS, batch_size=8),
                    progress=progress)
    print("6/7 predicting model properties with linear probes")
    probes = markdown_table(predict_properties(out / "sane", out / "probes", progress=progress))
    print(probes)
    print("7/7 sampling new models around 5 prompt models")
    samples = sample_from_run(out / "sane", out / "samples",
                              config=SamplingConfig(samples=20, keep=5))
    prompts = samples["prompts"]
    history = atomic.read_json(out / "sane" / "history.json")
    first, last = history[0], history[-1]
    decoded = last["fidelity"]["train"]
    kept = [s["score"] for s in samples["samples"]]
    prompt_mean = sum(p["score"] for p in prompts) / len(prompts)
    [controls] = [g["memorization"] for g in samples["architectures"]]
    report = "\n".join([
        "# sane demo", "", table, "", "![test accuracy](zoo/accuracy.png)", "",
        "## Token store", "",
        f"- {len(store.rows)} checkpoints × {m.num_tokens} tokens × {m.token_size} values "
        f"({store.tokens.nbytes / 2**10:.0f} KiB, one copy per checkpoint)",
        f"- aligned to model {store.meta['alignment_reference']} by weight matching",
        "- per split: " + ", ".join(f"{s} {len(store.split_rows(s))}"
                                      for s in ("train", "val", "test")),
        f"- a training batch: tokens {list(batch.tokens.shape)} (views, batch, window, "
        f"token size), positions {list(batch.positions.shape)}", "",
        "## SANE pretraining", "",
        f"- {describe(sane)}",
        f"- {len(history)} epochs: validation reconstruction loss {first['val_reconstruction']:.4f}"
        f" → {last['val_reconstruction']:.4f}, R² {first['val_r2']:.3f} → {last['val_r2']:.3f}",
        f"- its {decoded['models']} training models decoded whole: R² {decoded['r2']:.3f}, test "
        f"accuracy {decoded['decoded_accuracy']:.3f} against {decoded['accuracy']:.3f} for the "
        "originals",
        "- per-epoch figures: [sane/report.md](sane/report.md), ![loss](sane/loss.png)", "",
        "## Property prediction: test R² (validation R²)", "",
        "Linear probes fitted on the training split's checkpoints, their strength chosen on the "
        "validation split (a handful of models here: the figures are noisy).", "", probes, "",
        "## Sampled models", "",
        f"- 20 drawn around {len(prompts)} prompt models, the 5 best kept: validation accuracy "
        + ", ".join(f"{s['score']:.3f}" for s in samples["samples"])
        + " (prompts: " + ", ".join(f"{p['score']:.3f}" for p in prompts) + ")",
        f"- kept mean {sum(kept) / len(kept):.3f} against {prompt_mean:.3f} for the prompts; "
        "memorization baselines: noised prompts "
        f"{controls['baselines']['noised prompts']['mean']:.3f}, prompt averages "
        f"{controls['baselines']['prompt averages']['mean']:.3f}. Samples this close to their "
        "prompts are near-copies: see [samples/samples.md](samples/samples.md)", "",
    ])
    atomic.write_text(out / "report.md", report)
    print(f"report: {out / 'report.md'}")
    return out / "report.md"
