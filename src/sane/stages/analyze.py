"""``sane analyze``: the layer-wise analysis (SANE §4): the spread of each layer's token
latents against the WeightWatcher-style spectral metrics of the same layer, and how the
model-level averages of each relate to test accuracy.

The SANE metric of layer ``l`` of a model is ``ẑ_l``: the standard deviation of that layer's
token latents over its tokens, averaged over the latent dimensions (SANE Eq. 8). The spectral
metrics are those of :mod:`sane.weights.spectral` (NaN for layers that are not matrices or
convolutions, and alpha for spectra too small to fit).

::

    OUT/
      analysis.json   per store row and layer: z_spread, log_spectral_norm, alpha,
                      alpha_weighted; per metric: the mean over models per layer and the
                      Pearson and Spearman correlation of its layer average with test accuracy
      analysis.md     the correlations as a table
      analysis.png    metrics over layer index (mean ± std over models); layer averages
                      against test accuracy
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sane import atomic, markdown
from sane.downstream.analysis import correlations, layer_spread
from sane.pipeline import Pipeline
from sane.run import Run
from sane.weights.spectral import MIN_EVALS, layer_metrics
from sane.weights.store import TokenStore

METRICS = ("z_spread", "log_spectral_norm", "alpha", "alpha_weighted")


def layer_spreads(pipe: Pipeline, store: TokenStore, *, batch_size: int = 16,
                  progress: bool = True) -> np.ndarray:
    """``[M, L]``: ``ẑ_l`` (:func:`~sane.downstream.analysis.layer_spread`) of every store
    row and token layer, the latents from the engine (:meth:`Pipeline.latents`)."""
    layer, layers = store.positions[:, 1], len(store.manifest.layers)
    parts = []
    for start in tqdm(range(0, len(store.rows), batch_size), desc="latents", unit="batch",
                      disable=not progress):
        states = [store.state_dict(r) for r in range(start, min(start + batch_size,
                                                                len(store.rows)))]
        parts.append(layer_spread(torch.stack(pipe.latents(states, aligned=True)), layer,
                                  layers))
    return np.concatenate(parts)


def spectral_metrics(store: TokenStore, *, min_evals: int = MIN_EVALS,
                     progress: bool = True) -> dict[str, np.ndarray]:
    """``{metric: [M, L]}`` spectral metrics of every store row and token layer (NaN where
    undefined)."""
    names = ("log_spectral_norm", "alpha", "alpha_weighted")
    layers = store.manifest.layers
    out = {n: np.full((len(store.rows), len(layers)), np.nan) for n in names}
    for row in tqdm(range(len(store.rows)), desc="spectra", unit="ckpt", disable=not progress):
        state = store.state_dict(row)
        for index, ly in enumerate(layers):
            weight = state[ly.weight_key]
            if weight.ndim < 2:
                continue  # batch-norm and other vectors have no spectrum
            metrics = layer_metrics(weight, min_evals)
            for n in names:
                out[n][row, index] = metrics[n]
    return out


def analyze(run: str | Path, out: str | Path, *, store: str | Path | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Run the layer analysis of the store of ``run`` (or ``store``) into ``out``."""
    tokens = Run(run).store(store)
    pipe = Pipeline(Run(run).model(), tokens.tokenizer)
    per_layer = {"z_spread": layer_spreads(pipe, tokens, progress=progress),
                 **spectral_metrics(tokens, progress=progress)}
    accuracy = tokens.property("test_acc")
    with _all_nan_is_nan():
        summary = {
            name: {"layer_mean": _nan_list(np.nanmean(values, axis=0)),
                   "accuracy": correlations(np.nanmean(values, axis=1), accuracy)}
            for name, values in per_layer.items()
        }
    report = {
        "run": str(Path(run).resolve()), "store": str(tokens.path.resolve()),
        "layers": [ly.weight_key for ly in tokens.manifest.layers],
        "rows": [{"model": m, "epoch": e, "split": s} for m, e, s in tokens.rows],
        "per_layer": {name: [_nan_list(r) for r in values] for name, values in per_layer.items()},
        "summary": summary,
    }
    out = Path(out)
    atomic.write_json(out / "analysis.json", report)
    atomic.write_text(out / "analysis.md", "# Layer analysis: layer averages against test "
                      "accuracy\n\n" + analysis_table(summary) + "\n")
    _plot(out / "analysis.png", per_layer, accuracy)
    return report


@contextlib.contextmanager
def _all_nan_is_nan() -> Iterator[None]:
    """nanmean and nanstd of an all-NaN slice are NaN, as wanted: silence their warnings."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.filterwarnings("ignore", "Mean of empty slice")
        warnings.filterwarnings("ignore", "Degrees of freedom <= 0")
        yield


def _nan_list(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


def analysis_table(summary: dict[str, Any]) -> str:
    """Each metric's layer average against test accuracy (``report["summary"]`` of
    :func:`analyze`) as a Markdown table."""
    rows = [[name, *("n/a" if s["accuracy"][k] is None else s["accuracy"][k]
                     for k in ("pearson", "spearman")), s["accuracy"]["checkpoints"]]
            for name, s in summary.items()]
    return markdown.table(["metric", "Pearson", "Spearman", "checkpoints"], rows, digits=3)


def _plot(path: Path, per_layer: dict[str, np.ndarray], accuracy: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(per_layer), figsize=(3.2 * len(per_layer), 6))
    for column, (name, values) in enumerate(per_layer.items()):
        with _all_nan_is_nan():
            mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
            average = np.nanmean(values, axis=1)
        layers = np.arange(values.shape[1])
        top, bottom = axes[0, column], axes[1, column]
        top.errorbar(layers, mean, yerr=std, marker="o", capsize=3)
        top.set(title=name, xlabel="layer", xticks=layers)
        bottom.scatter(average, accuracy, s=6, alpha=0.5)
        bottom.set(xlabel=f"mean {name}", ylabel="test accuracy")
    fig.tight_layout()
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
