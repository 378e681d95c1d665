"""``sane probe``: predicting model properties from their weights (SANE §5.1), SANE
embeddings against the ``W`` and ``s(W)`` baselines, each through a linear probe
(:mod:`sane.downstream.probes`), on one token store.

::

    OUT/
      embeddings.npy   float64 [M, d_z], one row per store checkpoint (with "SANE")
      probes.json      the settings and one row per (feature set, property): alpha, R² and
                       sample counts per split; with a SANE, its reconstruction by function
                       per split (:mod:`sane.train.fidelity`)
      probes.md        test R² (validation R²) per property and feature set, and the
                       reconstruction table
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sane import atomic
from sane.downstream.features import store_features
from sane.downstream.probes import markdown_table, probe_table
from sane.errors import FormatError
from sane.model import SANE
from sane.train.fidelity import fidelity_markdown, reconstruction_report
from sane.train.run_dir import run_store

PROPERTIES = ("test_acc", "epoch", "ggap")
FEATURES = ("SANE", "W", "sW-layer")


@dataclass(frozen=True)
class ProbeResult:
    """What property prediction computed: one row per (feature set, property) of
    :func:`~sane.downstream.probes.probe_table` (``rows``), and with a SANE its reconstruction
    by function per split (``reconstruction``, :mod:`sane.train.fidelity`)."""

    rows: list[dict[str, Any]]
    reconstruction: dict[str, Any] | None

    def markdown(self) -> str:
        """Test R² (validation R²) per property and feature set."""
        return markdown_table(self.rows)


def predict_properties(
    run: str | Path | None,
    out: str | Path,
    *,
    store: str | Path | None = None,
    features: Sequence[str] = FEATURES,
    properties: Sequence[str] = PROPERTIES,
    progress: bool = True,
) -> ProbeResult:
    """Probe ``properties`` from each feature set on the store's splits; writes ``out``.

    ``run`` is a pretraining run directory (needed for ``"SANE"``); ``store`` defaults to the
    store the run was trained on.
    """
    if run is None and store is None:
        raise FormatError("give a pretraining run or a token store")
    model = None if run is None else SANE.from_pretrained(run)
    tokens = run_store(run, store)
    for name in properties:
        tokens.property(name)  # unknown names fail before any work
    values = store_features(tokens, features, model, progress=progress)
    rows = probe_table(values, {p: tokens.property(p) for p in properties},
                       {s: tokens.split_rows(s) for s in ("train", "val", "test")})
    out = Path(out)
    if "SANE" in values:
        atomic.save_array(out / "embeddings.npy", values["SANE"])
    fidelity = (None if model is None
                else reconstruction_report(model, tokens, ("train", "val", "test")))
    atomic.write_json(out / "probes.json", {
        "run": None if run is None else str(Path(run).resolve()),
        "store": str(tokens.path.resolve()), "features": list(features),
        "properties": list(properties), "results": rows, "reconstruction": fidelity,
    })
    text = "# Property prediction: test R² (validation R²)\n\n" + markdown_table(rows) + "\n"
    if fidelity is not None:
        text += ("\n## Reconstruction by function\n\nUp to 16 models per split, each at its "
                 "last stored epoch, encoded and decoded whole.\n\n"
                 + fidelity_markdown(fidelity) + "\n")
    atomic.write_text(out / "probes.md", text)
    return ProbeResult(rows, fidelity)
