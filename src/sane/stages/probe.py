"""``sane probe``: predicting model properties from their weights (SANE §5.1), SANE
embeddings against the ``W`` and ``s(W)`` baselines, each through a linear probe
(:mod:`sane.downstream.probes`), and optionally against a neural functional trained end to
end (``NFN``, :mod:`sane.downstream.nfn_probe`), on one token store; with rank metrics and
bootstrap intervals over test models, classification probes for the zoo's categorical
hyperparameters, out-of-distribution flags (:mod:`sane.downstream.ood`) and, optionally,
predictions for the checkpoints of another zoo.

::

    OUT/
      embeddings.npy   float64 [M, d_z], one row per store checkpoint (with "SANE")
      probes.json      the settings; one row per (feature set, property): alpha, R² and
                       Kendall τ per split with 95 % intervals, the test predictions; the
                       classification probes; the out-of-distribution thresholds and the
                       test checkpoints' distances; predictions for another zoo; with a
                       SANE, its reconstruction by function per split and its pretraining
                       time; with NFN, its training (time, sizes, validation curves)
      probes.md        the tables: R² and τ in the layout of SANE's Table 1, classification
                       accuracy against the majority class, flags, predictions
      scatter-<property>.png   predicted against true test values, a panel per feature set
      ood.json, ood-<space>.npy   the out-of-distribution reference (the training split's
                       embeddings and per-layer weight statistics)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sane import atomic, markdown
from sane.checkpoints import check_weights
from sane.downstream.features import (
    PERMUTATIONS,
    FeatureSet,
    baseline_features,
    nfn_predictions,
    sane_features,
)
from sane.downstream.nfn_probe import NFNConfig, require_nfn
from sane.downstream.ood import SPACES, OODReference
from sane.downstream.probes import (
    PROPERTY_LABELS,
    ClassRow,
    ProbeRow,
    class_markdown_table,
    class_probe_table,
    markdown_table,
    probe_table,
)
from sane.errors import FormatError
from sane.model import SANE
from sane.pipeline import Pipeline
from sane.run import Run
from sane.stages.features import store_features
from sane.train.fidelity import fidelity_markdown, reconstruction_report
from sane.weights.baselines import BASELINES
from sane.weights.store import TokenStore
from sane.zoo import Zoo
from sane.zoo.storage import MANIFEST as ZOO_MANIFEST

PROPERTIES = ("test_acc", "epoch", "ggap")
FEATURES = (FeatureSet.SANE, FeatureSet.SANE_STD, FeatureSet.W, FeatureSet.SW_LAYER)


@dataclass(frozen=True)
class ProbeResult:
    """What property prediction computed: one row per (feature set, property) of
    :func:`~sane.downstream.probes.probe_table` (``rows``: R² and τ with intervals), the
    classification probes (``classification``), the out-of-distribution summary (``ood``:
    spaces, thresholds and the test checkpoints' flags; None without SANE features), predictions
    for another zoo's checkpoints (``predictions``), with a SANE its reconstruction by
    function per split (``reconstruction``) and its pretraining time in seconds
    (``pretraining_seconds``, None when the run has no history), and with the NFN probe its
    training record (``nfn``: config, seconds, selections, validation curves)."""

    rows: list[ProbeRow]
    classification: list[ClassRow]
    ood: dict[str, Any] | None
    predictions: list[dict[str, Any]]
    reconstruction: dict[str, Any] | None
    pretraining_seconds: float | None = None
    nfn: dict[str, Any] | None = None

    def markdown(self, metric: str = "r2") -> str:
        """The test ``metric`` ("r2" or "tau") with its bootstrap 95 % interval, in the
        layout of SANE's Table 1."""
        return markdown_table(self.rows, metric)


def hyperparameters(store: TokenStore) -> dict[str, np.ndarray]:
    """Categorical hyperparameters per store row, ``[M]`` strings: activation,
    initialization and dropout from each row's architecture, and the optimizer from the
    zoo's recipes when the zoo is at hand."""
    archs = [store.architecture(r) for r in range(len(store.rows))]
    labels = {"activation": np.array([a.activation for a in archs]),
              "init": np.array([a.init for a in archs]),
              "dropout": np.array([str(a.dropout) for a in archs])}
    if (store.zoo_path / ZOO_MANIFEST).is_file():
        zoo = Zoo.open(store.zoo_path)
        labels["optimizer"] = np.array([str(zoo.model(m).training.get("optimizer"))
                                        for m, _, _ in store.rows])
    return labels


def predict_properties(
    run: str | Path | None,
    out: str | Path,
    *,
    store: str | Path | None = None,
    features: Sequence[FeatureSet | str] = FEATURES,
    properties: Sequence[str] = PROPERTIES,
    predict: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    precision: str = "auto",
    permutations: int = PERMUTATIONS,
    nfn: NFNConfig | None = None,
) -> ProbeResult:
    """Probe ``properties`` and the categorical hyperparameters from each feature set on the
    store's splits; writes ``out``.

    ``run`` is a pretraining run directory (needed for ``"SANE"``); ``store`` defaults to the
    store the run was trained on. ``predict`` names another zoo: each of its models' last
    checkpoint is predicted by every probe and, with SANE features, flagged when it lies
    outside the training zoo. The SANE computes on ``device`` in ``precision``
    (:meth:`sane.model.SANE.from_pretrained`); its embeddings average ``permutations``
    random permutations of each model (:meth:`sane.pipeline.Pipeline.embed`). The
    feature set ``"NFN"`` is the NFN probe (:func:`~sane.downstream.features.nfn_predictions`,
    trained as ``nfn`` says), scored as the probes are.
    """
    if run is None and store is None:
        raise FormatError("give a pretraining run or a token store")
    features = FeatureSet.parse_all(features)
    if FeatureSet.NFN in features:
        require_nfn()
    model = None if run is None else SANE.from_pretrained(run, device=device,
                                                           precision=precision)
    tokens = TokenStore.open(store) if run is None else Run(run).store(store)
    for name in properties:
        tokens.property(name)  # unknown names fail before any work,
    # and so does a bad checkpoint of the zoo to predict
    ids, other_states = ([], []) if predict is None else _other_zoo(predict, tokens)
    pipe = None if model is None else Pipeline(model, tokens.tokenizer)
    values = store_features(tokens, [f for f in features if f != FeatureSet.NFN], pipe,
                            progress=progress, permutations=permutations)
    splits = {s: tokens.split_rows(s) for s in ("train", "val", "test")}
    groups = [m for m, _, _ in tokens.rows]
    # the out-of-distribution spaces (sane.downstream.ood), whether or not they are probed
    spaces = {}
    if FeatureSet.SANE in values:
        spaces = {s: values[s] if s in values else baseline_features(tokens, s)
                  for s in SPACES}
    wanted = [*values, *(s for s in spaces if s not in values)]
    others = (None if predict is None
              else _other_features(other_states, tokens, wanted, model, permutations))
    targets = {p: tokens.property(p) for p in properties}
    learned, nfn_record = None, None
    if FeatureSet.NFN in features:
        predicted, fitted = nfn_predictions(tokens, targets, nfn, progress=progress,
                                            others=None if others is None else other_states)
        learned = {FeatureSet.NFN: predicted}
        nfn_record = {"config": fitted.config.to_dict(), "seconds": fitted.seconds_,
                      "train_checkpoints": len(splits["train"]),
                      "selected": dict(zip(properties, fitted.selected_)),
                      "history": fitted.history_}
    rows = probe_table(values, targets, splits, groups, predicted=learned,
                       extra=None if others is None else {n: others[n] for n in values})
    classification = class_probe_table(values, hyperparameters(tokens), splits)
    out = Path(out)
    ood, other_flags = None, None
    if FeatureSet.SANE in values:
        atomic.save_array(out / "embeddings.npy", values[FeatureSet.SANE])
        train = splits["train"]
        reference = OODReference.fit({s: x[train] for s, x in spaces.items()},
                                     [groups[i] for i in train], permutations=permutations)
        reference.save(out)
        test = reference.flags({s: x[splits["test"]] for s, x in spaces.items()})
        ood = {**reference.summary(),
               "test": [{"model": tokens.rows[r][0], "epoch": tokens.rows[r][1], **f}
                        for r, f in zip(splits["test"].tolist(), test)]}
        if others is not None:
            other_flags = reference.flags({s: others[s] for s in spaces})
    predictions = [] if others is None else _predictions(ids, rows, other_flags)
    fidelity = (None if model is None
                else reconstruction_report(model, tokens, ("train", "val", "test")))
    pretraining = None if run is None else _pretraining_seconds(Path(run))
    atomic.write_json(out / "probes.json", {
        "run": None if run is None else str(Path(run).resolve()),
        "store": str(tokens.path.resolve()), "features": list(features),
        "properties": list(properties), "permutations": permutations,
        "results": [r.to_dict() for r in rows],
        "classification": [dataclasses.asdict(r) for r in classification], "ood": ood,
        "predictions": predictions,
        "reconstruction": fidelity, "pretraining_seconds": pretraining, "nfn": nfn_record,
    })
    for prop in properties:
        _scatter(out / f"scatter-{prop}.png", [r for r in rows if r.property == prop])
    result = ProbeResult(rows, classification, ood, predictions, fidelity, pretraining,
                         nfn_record)
    atomic.write_text(out / "probes.md", _markdown(result, properties))
    return result


def _pretraining_seconds(run: Path) -> float | None:
    """SANE's pretraining time summed over the epochs of the run's ``history.json`` (None
    without one)."""
    file = run / "history.json"
    if not file.is_file():
        return None
    return float(sum(record["seconds"] for record in atomic.read_json(file)))


def _other_zoo(path: str | Path, store: TokenStore
                ) -> tuple[list[tuple[str, int]], list[dict[str, torch.Tensor]]]:
    """The last checkpoint ``(model, epoch)`` of every model of the zoo at ``path`` and its
    state dict under the store tokenizer's canonical keys, each checked to hold usable weights
    (:func:`~sane.checkpoints.check_weights`) that fit the store (errors name the file)."""
    zoo = Zoo.open(path)
    ids = [(m.id, zoo.checkpoint_epochs(m.id)[-1]) for m in zoo.models
           if zoo.checkpoint_epochs(m.id)]
    if not ids:
        raise FormatError(f"{zoo.path}: no stored checkpoint to predict")
    states = []
    for model_id, epoch in ids:
        file = zoo.checkpoint_path(model_id, epoch)
        state = zoo.load_checkpoint(model_id, epoch)
        check_weights(state, file)
        try:
            states.append(store.tokenizer.canonical(state))
        except FormatError as error:
            raise FormatError(f"{file}: {error}") from error
    return ids, states


def _other_features(states: list[dict[str, torch.Tensor]], store: TokenStore,
                    names: Sequence[FeatureSet], model: SANE | None, permutations: int
                    ) -> dict[FeatureSet, np.ndarray]:
    """The features of another zoo's canonical ``states`` per feature set of ``names``,
    computed as for the store (SANE: aligned, tokenized and embedded by the store's
    tokenizer; baselines: from the checkpoint)."""
    from sane.pipeline import Pipeline

    features = {}
    if any(name.from_sane for name in names):
        both = Pipeline(model, store.tokenizer).embed(states, spread=True,
                                                      permutations=permutations)
        features = sane_features(both, model.config.d_latent)
    for name in names:
        if not name.from_sane:
            features[name] = BASELINES[name](
                states, include_batchnorm=store.settings.include_batchnorm)
    return {name: features[name] for name in names}


def _predictions(ids: list[tuple[str, int]], rows: list[ProbeRow],
                 flags: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One record per checkpoint of another zoo: its predictions per (property, feature
    set) and, with SANE features, its out-of-distribution flag
    (:meth:`OODReference.flags`)."""
    records = []
    for i, (model_id, epoch) in enumerate(ids):
        record: dict[str, Any] = {"model": model_id, "epoch": epoch, "predicted": {
            f"{r.property}/{r.features}": r.extra_predicted[i] for r in rows}}
        records.append(record | ({} if flags is None else flags[i]))
    return records


def _markdown(result: ProbeResult, properties: Sequence[str]) -> str:
    lines = ["# Property prediction", "",
             "Test R² and Kendall τ of linear probes fitted on the training split's "
             "checkpoints, their strength chosen on the validation split; in brackets the "
             "95 % bootstrap interval over test *models*. Rows: test accuracy (Acc), epoch "
             "(Ep), generalization gap (GGap), as in SANE's Table 1."
             + ("" if result.ood is None else
                f" SANE embeddings are averaged over the aligned model and "
                f"{result.ood['permutations']} random permutations of it.")
             + ("" if result.nfn is None else
                " The NFN column is no linear probe: a permutation-invariant network trained "
                "end to end on the same training checkpoints, its size and epochs chosen per "
                "property on the validation split (below)."), "",
             "## R²", "", markdown_table(result.rows, "r2"), "",
             "## Kendall τ", "", markdown_table(result.rows, "tau"), "",
             *(f"![{PROPERTY_LABELS.get(p, p)}](scatter-{p}.png)" for p in properties), ""]
    if result.nfn is not None:
        lines += ["## NFN probe", "", _nfn_markdown(result.nfn, result.pretraining_seconds), ""]
    if result.classification:
        lines += ["## Hyperparameters: classification probes (test accuracy)", "",
                  "Logistic regression, strength chosen on the validation split; the majority "
                  "class of the training split is the baseline.", "",
                  class_markdown_table(result.classification), ""]
    if result.ood is not None:
        flagged = [t for t in result.ood["test"] if t["ood"]]
        thresholds = ", ".join(f"{s} {t:.4f}" for s, t in result.ood["thresholds"].items())
        lines += ["## Out of distribution", "",
                  f"Thresholds ({thresholds}): in each space (features standardized by the "
                  f"training split), the {result.ood['percentile']:g}th percentile of the "
                  "training checkpoints' distances to the nearest checkpoint of another "
                  "training model. A checkpoint beyond the threshold in any space is flagged; "
                  "its distance is the largest ratio of distance to threshold. "
                  f"{len(flagged)} of {len(result.ood['test'])} test checkpoints are flagged.",
                  ""]
    if result.predictions:
        keys = list(result.predictions[0]["predicted"])
        lines += ["## Predictions for another zoo", "", markdown.table(
            ["model", "epoch", *keys, *(["distance / threshold", "OOD"]
                                        if "ood" in result.predictions[0]
                                        else [])],
            [[p["model"], p["epoch"], *(p["predicted"][k] for k in keys),
              *([p["distance"], _flag(p)] if "ood" in p else [])]
             for p in result.predictions], digits=3), ""]
    if result.reconstruction is not None:
        lines += ["## Reconstruction by function", "",
                  "Up to 16 models per split, each at its last stored epoch, encoded and "
                  "decoded whole.", "", fidelity_markdown(result.reconstruction), ""]
    return "\n".join(lines)


def _nfn_markdown(record: dict[str, Any], pretraining: float | None) -> str:
    """How the NFN probe was trained, what validation chose, and its time beside SANE's."""
    config = record["config"]
    sizes = ", ".join(str(c) for c in config["channels"])
    epochs: dict[str, list[float]] = {}  # per size, the seconds of each epoch
    for h in record["history"]:
        epochs.setdefault(str(h["channels"]), []).append(h["seconds"])
    ran = ", ".join(f"{c}: {len(e)} in {sum(e):.0f} s" for c, e in epochs.items())
    text = (f"HNP layers (the `nfn` package) of channels {sizes}, each trained for up to "
            f"{config['epochs']} epochs (stopped {config['patience']} epochs after its last "
            f"validation improvement; here {ran}"
            f") on {record['train_checkpoints']} training checkpoints, batches of "
            f"{config['batch_size']}, Adam {config['lr']:g}, seed {config['seed']}: "
            f"{record['seconds']:.0f} s of training")
    text += ("." if pretraining is None
             else f", against {pretraining:.0f} s of SANE pretraining (the run's history).")
    return "\n".join([text, "", markdown.table(
        ["property", "channels", "epoch", "validation R²"],
        [[PROPERTY_LABELS.get(p, p), str(s["channels"]), s["epoch"], s["validation_r2"]]
         for p, s in record["selected"].items()], digits=3, text_columns=2)])


def _flag(record: dict[str, Any]) -> str:
    """"no", or "yes" and the spaces in which the checkpoint lies beyond the threshold."""
    return f"yes ({', '.join(record['spaces'])})" if record["ood"] else "no"


def _scatter(path: Path, rows: list[ProbeRow]) -> None:
    """Predicted against true test values of one property, one panel per feature set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, row in zip(axes[0], rows):
        truth, predicted = row.test_truth, row.test_predicted
        ax.scatter(truth, predicted, s=8, alpha=0.6)
        low, high = min(truth + predicted), max(truth + predicted)
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
        ax.set(title=f"{row.features}: R² {row.r2_test:.2f}, τ {row.tau_test:.2f}",
               xlabel=f"true {row.property}", ylabel="predicted")
    fig.tight_layout()
    atomic.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
