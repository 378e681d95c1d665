"""The human-readable record of a pretraining run: ``history.json``, ``report.md`` (per-epoch
losses and R², then reconstruction by function) and ``loss.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sane import atomic, markdown
from sane.train.fidelity import fidelity_markdown


def write_reports(out: Path, history: list[dict[str, Any]]) -> None:
    atomic.write_json(out / "history.json", history)
    keys = ["epoch", "train_loss", "train_reconstruction", "train_contrast", "train_r2",
            "train_model_r2", "val_loss", "val_reconstruction", "val_contrast", "val_r2",
            "val_model_r2", "seconds"]
    keys = [k for k in keys if any(k in r for r in history)]
    lines = ["# SANE pretraining", "",
             "Window R² is measured against the clean (noise-free) windows; model R² over "
             "whole decoded models (haloed, noise-free).", "",
             markdown.table(keys, [[r.get(k) for k in keys] for r in history], text_columns=0)]
    if "fidelity" in history[-1]:
        fidelity = history[-1]["fidelity"]
        lines += ["", "## Reconstruction by function (after the last epoch)", "",
                  "Each model's last stored epoch, encoded and decoded whole.", ""]
        if "layouts" in fidelity:  # a store set: one report per layout
            for layout in fidelity["layouts"]:
                lines += [f"### {layout['architecture']}", "", fidelity_markdown(layout), ""]
        else:
            lines.append(fidelity_markdown(fidelity))
    atomic.write_text(out / "report.md", "\n".join(lines) + "\n")
    _plot(out / "loss.png", history)


def _plot(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss, r2) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [r["epoch"] for r in history]
    for split in ("train", "val"):
        if f"{split}_loss" in history[-1]:
            loss.plot(epochs, [r[f"{split}_loss"] for r in history], label=split)
            r2.plot(epochs, [r[f"{split}_r2"] for r in history], label=split)
    loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    r2.set(xlabel="epoch", ylabel="R²", title="reconstruction R²")
    for ax in (loss, r2):
        ax.legend()
    fig.tight_layout()
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
