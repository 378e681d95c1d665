"""The out-of-distribution reference of a pretraining run (:mod:`sane.downstream.ood`), fitted
after pretraining, outside the training loop: the embeddings of every training-split
checkpoint of every layout of the run's store and, for a store of one layout, their
per-layer weight statistics (layouts differ in their layers). ``sane pretrain`` fits it when
training is done; ``sane embed`` flags checkpoints against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sane.downstream.features import PERMUTATIONS, FeatureSet, sw_layer_rows
from sane.downstream.ood import OODReference
from sane.pipeline import Pipeline
from sane.run import Run
from sane.stages.features import store_embeddings


def fit_reference(run: str | Path, *, store: str | Path | None = None,
                  permutations: int = PERMUTATIONS) -> OODReference:
    """The reference of the run in ``run`` on its ``store`` (default: the one it records),
    fitted and saved into it unless it holds one already; returns it."""
    run = Run(run)
    existing = run.ood()
    if existing is not None:
        return existing
    model, stores = run.model(), run.stores(store)
    embeddings, statistics, models = [], [], []
    for store in stores:
        rows = store.split_rows("train")
        embeddings.append(store_embeddings(Pipeline(model, store.tokenizer), store, rows=rows,
                                           permutations=permutations, progress=False))
        if len(stores) == 1:
            statistics.append(sw_layer_rows(store, rows))
        models += [store.rows[r][0] for r in rows.tolist()]
    features = {FeatureSet.SANE: np.concatenate(embeddings)}
    if statistics:
        features[FeatureSet.SW_LAYER] = statistics[0]
    reference = OODReference.fit(features, models, permutations=permutations)
    run.save_ood(reference)
    return reference
