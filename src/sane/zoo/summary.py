"""What a zoo holds at a glance: a Markdown summary table and a plot of test accuracy.

A model's *final* test accuracy is the one of its last epoch with a recorded test accuracy
(models without any are counted but left out of the distribution).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sane import atomic, markdown
from sane.zoo.storage import Zoo

SPLITS = ("train", "val", "test")
COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def summary_table(zoo: Zoo) -> str:
    """A Markdown summary: dataset, architectures, then one table row per split and overall.

    Columns: number of models, last recorded epoch (range over models), stored checkpoints,
    and the distribution of final test accuracy (count, min, quartiles, max, mean) with the
    mean final generalization gap (train_acc - test_acc at the same epoch).
    """
    rows = {m.id: zoo.metrics(m.id) for m in zoo.models}
    archs = Counter(m.architecture.name for m in zoo.models)
    lines = [
        f"## Zoo `{zoo.path}`",
        "",
        f"- dataset: {zoo.dataset.get('name', 'unknown')}",
        f"- models: {len(zoo.models)} ("
        + ", ".join(f"{name}: {n}" for name, n in sorted(archs.items())) + ")",
        "",
    ]
    groups = {part: zoo.split[part] for part in SPLITS} | {"all": [m.id for m in zoo.models]}
    lines.append(markdown.table(
        ["split", "models", "last epoch", "checkpoints", "with test acc", "final test acc min",
         "q1", "median", "q3", "max", "mean", "ggap mean"],
        [_table_row(part, [rows[i] for i in ids]) for part, ids in groups.items()]))
    return "\n".join(lines)


def _table_row(part: str, models: list[list[dict[str, Any]]]) -> list[Any]:
    last = [r[-1]["epoch"] for r in models if r]
    checkpoints = sum(row["checkpoint"] for r in models for row in r)
    finals = [_final_pair(r) for r in models]
    acc = np.array([a for a, _ in finals if a is not None], dtype=float)
    gaps = [g for a, g in finals if a is not None and g is not None]
    epochs = "-" if not last else (
        f"{min(last)}" if min(last) == max(last) else f"{min(last)}–{max(last)}")
    cells: list[Any] = [part, len(models), epochs, checkpoints, acc.size]
    if acc.size:
        q1, median, q3 = np.percentile(acc, [25, 50, 75])
        cells += [float(v) for v in (acc.min(), q1, median, q3, acc.max(), acc.mean())]
    else:
        cells += ["-"] * 6
    cells.append(float(np.mean(gaps)) if gaps else "-")
    return cells


def _final_pair(rows: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(test_acc, ggap) of the last row with a test accuracy."""
    for row in reversed(rows):
        if row.get("test_acc") is not None:
            return row["test_acc"], row.get("ggap")
    return None, None


def plot_accuracy(zoo: Zoo, png_path: str | Path) -> None:
    """Plot test accuracy over epochs to a PNG (written atomically).

    One thin line per model coloured by its split, and per split the median over that
    split's models at each epoch as a thick line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    curves = 0
    for part in SPLITS:
        lines, by_epoch = [], {}
        for model_id in zoo.split[part]:
            points = [(r["epoch"], r["test_acc"]) for r in zoo.metrics(model_id)
                      if r.get("test_acc") is not None]
            for epoch, acc in points:
                by_epoch.setdefault(epoch, []).append(acc)
            if points:
                lines.append(points)
        if not lines:
            continue
        curves += len(lines)
        ax.add_collection(LineCollection(lines, colors=COLORS[part], linewidths=0.6, alpha=0.3))
        epochs = sorted(by_epoch)
        ax.plot(epochs, [np.median(by_epoch[e]) for e in epochs], color=COLORS[part],
                linewidth=2.2, label=f"median, {part} split ({len(lines)} models)")
    name = zoo.dataset.get("name", "unknown")
    ax.set_title(f"Test accuracy over epochs: {len(zoo.models)} models ({name})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    if curves:
        ax.autoscale_view()
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no test accuracy recorded", ha="center", va="center",
                transform=ax.transAxes)
    ax.grid(alpha=0.3)
    atomic.atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
