"""The novelty–quality frontier: sampling at several bandwidths, each beside the noise
baselines at the same distances (``sane sample --bandwidth 0.1,0.25,0.5,1``).

A sampler is worth using where, at equal distance from its prompts, its models are better
than the prompts plus noise. For each bandwidth, :func:`sample_frontier` samples into
``OUT/bandwidth-<b>/`` (:func:`sane.stages.sample.sample_from_run`) and reads off the mean
distance of SANE's first-round draws to their prompts, the report-split accuracy of those
draws and of the noise baselines' candidates at the same distances (no selection), and of
the kept models of each (the same selection), with SANE − the strongest noise baseline and
its 95 % interval over prompts.

**The default bandwidth** is chosen on validation data by one rule
(:func:`recommended_bandwidth`): among the bandwidths whose kept models keep at least
:data:`QUALITY` of the prompts' validation accuracy, the one where SANE's kept models lead
the strongest noise baseline's kept models by the most on validation; where SANE leads at
none, the smallest of them.

::

    OUT/bandwidth-<b>/   one ``sane sample`` output per bandwidth
    OUT/frontier.json    :class:`Frontier`
    OUT/frontier.md      the table and the recommended bandwidth
    OUT/frontier.png     report-split accuracy against distance, per method
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sane import atomic, markdown
from sane.downstream.sampling import SamplingConfig
from sane.downstream.verdicts import Versus
from sane.errors import ConfigError
from sane.stages.sample import SANE_METHOD, SampleResult, compare, sample_from_run

NOISE = ("noise", "per-tensor noise")
# A bandwidth is a candidate default only while its kept models keep this share of the
# prompts' validation accuracy.
QUALITY = 0.95


@dataclass(frozen=True)
class FrontierPoint:
    """One bandwidth: SANE's first-round draws lie ``distance`` from their prompts; per method
    (SANE and each noise baseline) the report-split mean of the first-round candidates
    (``draws``) and of the kept models (``kept``), the selection-split mean of the kept
    models (``kept_selection``); SANE against the strongest noise baseline, unselected draws
    (``versus_draws``) and kept models (``versus_kept``); the prompts' means on both
    splits."""

    bandwidth: float
    distance: float
    prompts: float
    prompts_selection: float
    draws: dict[str, float]
    kept: dict[str, float]
    kept_selection: dict[str, float]
    versus_draws: Versus | None
    versus_kept: Versus | None


@dataclass(frozen=True)
class Frontier:
    """The ``points`` in order of bandwidth, the mean distance between two prompts and the
    bandwidth :func:`recommended_bandwidth` picks."""

    points: list[FrontierPoint]
    prompt_distance: float | None
    recommended: float


def frontier_point(result: SampleResult) -> FrontierPoint:
    """The frontier's point for one sampling result."""
    methods = [SANE_METHOD, *(n for n in NOISE if n in result.baselines)]
    draws = compare([result], draws=True, names=NOISE)
    kept = compare([result], names=NOISE)
    return FrontierPoint(
        result.request.config.bandwidth, result.first_distance(), result.prompt_mean,
        sum(p.selection for p in result.prompts) / len(result.prompts),
        {m: result.first_draws(m).report_mean for m in methods},
        {m: result.kept(m).report_mean for m in methods},
        {m: result.kept(m).selection_mean for m in methods}, draws.verdict, kept.verdict)


def recommended_bandwidth(points: Sequence[FrontierPoint]) -> float:
    """The bandwidth the validation rule picks (see the module docstring)."""
    good = [p for p in points
            if p.kept_selection[SANE_METHOD] >= QUALITY * p.prompts_selection] or [
        min(points, key=lambda p: p.bandwidth)]

    def lead(p: FrontierPoint) -> float:
        rivals = [v for m, v in p.kept_selection.items() if m != SANE_METHOD]
        return p.kept_selection[SANE_METHOD] - max(rivals) if rivals else 0.0

    leading = [p for p in good if lead(p) > 0]
    if not leading:
        return min(p.bandwidth for p in good)
    return max(leading, key=lambda p: (lead(p), -p.bandwidth)).bandwidth


def sample_frontier(run: str | Path, out: str | Path, bandwidths: Sequence[float], *,
                    config: SamplingConfig | None = None, **options: Any) -> Frontier:
    """Sample with the SANE in ``run`` at each of ``bandwidths`` (``config`` otherwise;
    ``options`` as for :func:`sample_from_run`) into ``out/bandwidth-<b>``; writes the
    frontier into ``out`` and returns it."""
    if len(set(bandwidths)) < 2:
        raise ConfigError(f"a frontier needs at least two distinct bandwidths, got "
                          f"{list(bandwidths)}")
    config = config or SamplingConfig()
    out = Path(out)
    results = [sample_from_run(run, out / f"bandwidth-{b:g}",
                               config=dataclasses.replace(config, bandwidth=b), **options)
               for b in sorted(set(bandwidths))]
    points = [frontier_point(r) for r in results]
    distances = [a.prompt_distance for a in results[0].architectures
                 if a.prompt_distance is not None]
    frontier = Frontier(points, sum(distances) / len(distances) if distances else None,
                        recommended_bandwidth(points))
    atomic.write_json(out / "frontier.json", dataclasses.asdict(frontier))
    atomic.write_text(out / "frontier.md", frontier_markdown(frontier, results[0]))
    plot_frontier(frontier, out / "frontier.png", results[0].report_split)
    return frontier


def frontier_markdown(frontier: Frontier, result: SampleResult) -> str:
    """The frontier as a Markdown section (the splits named after ``result``)."""
    report, selection = result.report_split, result.selection_split
    methods = [SANE_METHOD, *(n for n in NOISE if n in frontier.points[0].draws)]
    rows = []
    for p in frontier.points:
        rows.append([f"{p.bandwidth:g}", f"{p.distance:.2f}",
                     *(p.draws[m] for m in methods), _versus(p.versus_draws),
                     *(p.kept[m] for m in methods), _versus(p.versus_kept)])
    apart = ("" if frontier.prompt_distance is None
             else f" Prompts lie {frontier.prompt_distance:.2f} apart (mean).")
    return "\n".join([
        f"# The novelty–quality frontier ({report} accuracy)", "",
        f"Per bandwidth: the mean L2 distance of SANE's first-round draws to their prompt, the "
        f"{report} accuracy of those draws and of each noise baseline's candidates at the same "
        f"distances (no selection), then of the models each kept (the same selection on "
        f"{selection}); SANE − the strongest noise baseline with its 95 % interval over "
        f"prompts.{apart} Prompts: {frontier.points[0].prompts:.4f}.", "",
        markdown.table(["bandwidth", "distance",
                        *(f"draws: {m}" for m in methods), "draws: SANE − strongest",
                        *(f"kept: {m}" for m in methods), "kept: SANE − strongest"], rows), "",
        f"The validation rule (the bandwidth whose kept models keep {QUALITY:.0%} of the "
        f"prompts' {selection} accuracy and lead the strongest noise baseline by the most on "
        f"{selection}; the smallest such when SANE leads at none) picks bandwidth "
        f"{frontier.recommended:g}.", "",
        "![frontier](frontier.png)", ""])


def _versus(v: Versus | None) -> str:
    if v is None:
        return ""
    interval = "" if v.interval is None else f" [{v.interval[0]:+.4f}, {v.interval[1]:+.4f}]"
    return f"{v.difference:+.4f}{interval} ({v.verdict}: {v.baseline})"


def plot_frontier(frontier: Frontier, path: str | Path, split: str = "test") -> None:
    """``split`` accuracy of the unselected draws against their distance to the prompts, one
    line per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [p.distance for p in frontier.points]
    for method in frontier.points[0].draws:
        ax.plot(x, [p.draws[method] for p in frontier.points], marker="o", label=method)
    ax.axhline(frontier.points[0].prompts, color="grey", linewidth=0.8, linestyle="--",
               label="prompts")
    ax.set(xlabel="L2 distance to the prompt (aligned weights)", ylabel=f"{split} accuracy",
           title="novelty against quality (draws before selection)")
    ax.legend()
    fig.tight_layout()
    atomic.atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
