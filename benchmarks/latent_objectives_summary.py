"""Which latent objective wins, chosen on validation and reported on test (issue 20).

Reads what ``benchmarks/latent_objectives.sh`` wrote for each variant and prints two tables:

- **validation** (what chooses): the validation models' whole-model R² after decoding (weights
  only), the SANE+std probes' validation R², and per bandwidth the lead of SANE's kept models
  over the strongest copy baseline by validation accuracy (the split that selected them);
- **test** (what is reported): the decoded validation models' accuracy ratio, the probes'
  test R², and per bandwidth the distance to the nearest prompt and SANE − the strongest
  baseline on test with its 95 % interval over prompts.

The variant with the highest mean validation lead over the bandwidths, among those whose
decoded validation R² and probe validation R² stay within 0.05 of the plain SANE's
(``noise-0``), is named the winner. Run::

    python benchmarks/latent_objectives_summary.py runs/digits-seed noise-0 noise-0.1 ...
    python benchmarks/latent_objectives_summary.py runs/fmnist-seed-latent noise-0 ... \\
        --runs runs/fmnist-seed-{variant} --baseline-run runs/reproduce-fmnist-seed/sane
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sane import markdown

PROPERTIES = ("test_acc", "epoch", "ggap")
TOLERANCE = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the directory latent_objectives.sh wrote")
    parser.add_argument("variants", nargs="+", help="e.g. noise-0 behaviour-0.1")
    parser.add_argument("--runs", default="{results}/sane-{variant}",
                        help="where each variant's run lies (default {results}/sane-{variant})")
    parser.add_argument("--baseline-run", type=Path,
                        help="the run of noise-0, where it lies elsewhere")
    args = parser.parse_args()
    found = {}
    for v in args.variants:
        run = Path(args.runs.format(results=args.results, variant=v))
        if v == "noise-0" and args.baseline_run is not None:
            run = args.baseline_run
        found[v] = _read(args.results, v, run)
    bandwidths = [p["bandwidth"] for p in found[args.variants[0]]["frontier"]["points"]]

    head = ["variant", "decoded val R²", *(f"probe val R² {p}" for p in PROPERTIES),
            *(f"val lead at {b:g}" for b in bandwidths), "mean lead"]
    rows, eligible = [], {}
    base = found.get("noise-0")
    for v, f in found.items():
        leads = [_lead(p, "kept_selection") for p in f["frontier"]["points"]]
        ok = base is None or (f["fidelity_r2"] >= base["fidelity_r2"] - TOLERANCE and all(
            f["probe_val"][p] >= base["probe_val"][p] - TOLERANCE for p in PROPERTIES))
        if ok:
            eligible[v] = float(np.mean(leads))
        rows.append([v, f"{f['fidelity_r2']:.3f}", *(f"{f['probe_val'][p]:.3f}"
                                                    for p in PROPERTIES),
                     *(f"{x:+.3f}" for x in leads), f"{np.mean(leads):+.3f}" + ("" if ok else
                                                                               " (regresses)")])
    print(f"Validation (chooses), {args.results}:\n")
    print(markdown.table(head, rows))
    winner = max(eligible, key=eligible.get) if eligible else None
    print(f"\nwinner on validation: {winner} (highest mean lead among variants within "
          f"{TOLERANCE} of noise-0's decoded and probe validation R²)\n")

    head = ["variant", "decoded val models: accuracy ratio",
            *(f"probe test R² {p}" for p in PROPERTIES),
            *(f"bandwidth {b:g}: distance, SANE − strongest [95 %]" for b in bandwidths)]
    rows = []
    for v, f in found.items():
        cells = []
        for p in f["frontier"]["points"]:
            versus = p["versus_kept"]
            low, high = versus["interval"]
            cells.append(f"{p['distance']:.2f}: {versus['difference']:+.3f} [{low:+.3f}, "
                         f"{high:+.3f}] {versus['verdict']}")
        rows.append([v, f"{f['fidelity_ratio']:.3f}",
                     *(f"{f['probe_test'][p]:.3f}" for p in PROPERTIES), *cells])
    apart = found[args.variants[0]]["frontier"]["prompt_distance"]
    print(f"Test (reports); prompts lie {apart:.2f} apart:\n")
    print(markdown.table(head, rows))


def _read(results: Path, variant: str, run: Path) -> dict:
    history = json.loads((run / "history.json").read_text())
    fidelity = history[-1]["fidelity"]["val"]
    probes = json.loads((results / f"probe-sane-{variant}" / "probes.json").read_text())
    cells = {(r["features"], r["property"]): r for r in probes["results"]}
    return {"fidelity_r2": fidelity["r2"], "fidelity_ratio": fidelity["ratio"],
            "probe_val": {p: cells["SANE+std", p]["r2_val"] for p in PROPERTIES},
            "probe_test": {p: cells["SANE+std", p]["r2_test"] for p in PROPERTIES},
            "frontier": json.loads((results / f"frontier-sane-{variant}" / "frontier.json")
                                   .read_text())}


def _lead(point: dict, which: str) -> float:
    """SANE's mean score minus the best baseline's, on ``which`` ("kept_selection": val)."""
    scores = point[which]
    return scores["SANE"] - max(v for k, v in scores.items() if k != "SANE")


if __name__ == "__main__":
    main()
