"""Which latent objective wins, chosen on validation and reported on test (issue 20).

Reads what ``benchmarks/latent_objectives.sh`` wrote for each variant and prints two tables:

- **validation** (what chooses): the validation models' whole-model R² after decoding (weights
  only), the SANE+std probes' validation R², and per bandwidth the lead of SANE's kept models
  over the strongest copy baseline by validation accuracy (the split that selected them),
  around training-model prompts and, where ``heldout-frontier-sane-VARIANT`` exists
  (``sane sample --prompt-split test``), around prompts held out from pretraining;
- **test** (what is reported): the decoded validation models' accuracy ratio, the probes'
  test R², and per bandwidth the distance to the nearest prompt and SANE − the strongest
  baseline on test with its 95 % interval over prompts, for both kinds of prompts.

The variant with the highest mean validation lead over the bandwidths (around held-out
prompts where measured: around training models a SANE may only remember them), among those
whose decoded validation R² and probe validation R² stay within 0.05 of the plain SANE's
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
# The frontiers read, by the prompts they sample around, and the directory prefix of each.
FRONTIERS = {"training prompts": "frontier", "held-out prompts": "heldout-frontier"}


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
    bandwidths = [p["bandwidth"] for p in found[args.variants[0]]["training prompts"]["points"]]

    kinds = [k for k in FRONTIERS if all(k in f for f in found.values())]
    head = ["variant", "decoded val R²", *(f"probe val R² {p}" for p in PROPERTIES),
            *(f"{k}: val lead at {b:g}" for k in kinds for b in bandwidths)]
    rows, eligible = [], {}
    base = found.get("noise-0")
    for v, f in found.items():
        leads = {k: [_lead(p, "kept_selection") for p in f[k]["points"]] for k in kinds}
        ok = base is None or (f["fidelity_r2"] >= base["fidelity_r2"] - TOLERANCE and all(
            f["probe_val"][p] >= base["probe_val"][p] - TOLERANCE for p in PROPERTIES))
        if ok:
            eligible[v] = float(np.mean(leads[kinds[-1]]))
        rows.append([v + ("" if ok else " (regresses)"), f"{f['fidelity_r2']:.3f}",
                     *(f"{f['probe_val'][p]:.3f}" for p in PROPERTIES),
                     *(f"{x:+.3f}" for k in kinds for x in leads[k])])
    print(f"Validation (chooses), {args.results}:\n")
    print(markdown.table(head, rows))
    winner = max(eligible, key=eligible.get) if eligible else None
    print(f"\nwinner on validation: {winner} (highest mean lead around {kinds[-1]} among "
          f"variants within {TOLERANCE} of noise-0's decoded and probe validation R²)\n")

    head = ["variant", "decoded val models: accuracy ratio",
            *(f"probe test R² {p}" for p in PROPERTIES),
            *(f"{k} at {b:g}: distance, SANE − strongest [95 %]" for k in kinds
              for b in bandwidths)]
    rows = []
    for v, f in found.items():
        cells = []
        for p in (p for k in kinds for p in f[k]["points"]):
            versus = p["versus_kept"]
            low, high = versus["interval"]
            cells.append(f"{p['distance']:.2f}: {versus['difference']:+.3f} [{low:+.3f}, "
                         f"{high:+.3f}] {versus['verdict']}")
        rows.append([v, f"{f['fidelity_ratio']:.3f}",
                     *(f"{f['probe_test'][p]:.3f}" for p in PROPERTIES), *cells])
    apart = found[args.variants[0]][kinds[0]]["prompt_distance"]
    print(f"Test (reports); prompts lie {apart:.2f} apart:\n")
    print(markdown.table(head, rows))


def _read(results: Path, variant: str, run: Path) -> dict:
    history = json.loads((run / "history.json").read_text())
    fidelity = history[-1]["fidelity"]["val"]
    probes = json.loads((results / f"probe-sane-{variant}" / "probes.json").read_text())
    cells = {(r["features"], r["property"]): r for r in probes["results"]}
    found = {"fidelity_r2": fidelity["r2"], "fidelity_ratio": fidelity["ratio"],
             "probe_val": {p: cells["SANE+std", p]["r2_val"] for p in PROPERTIES},
             "probe_test": {p: cells["SANE+std", p]["r2_test"] for p in PROPERTIES}}
    for kind, prefix in FRONTIERS.items():
        file = results / f"{prefix}-sane-{variant}" / "frontier.json"
        if file.is_file():
            found[kind] = json.loads(file.read_text())
    return found


def _lead(point: dict, which: str) -> float:
    """SANE's mean score minus the best baseline's, on ``which`` ("kept_selection": val)."""
    scores = point[which]
    return scores["SANE"] - max(v for k, v in scores.items() if k != "SANE")


if __name__ == "__main__":
    main()
