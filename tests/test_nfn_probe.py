"""The NFN probe: a permutation-invariant neural functional trained on the store's
checkpoints, and its row in `sane probe`."""

from __future__ import annotations

import numpy as np

from sane.downstream.probes import Predicted, markdown_table, probe_table


def test_probe_table_scores_given_predictions_as_it_scores_probes():
    rng = np.random.default_rng(0)
    y = rng.normal(size=40)
    splits = {"train": np.arange(20), "val": np.arange(20, 30), "test": np.arange(30, 40)}
    groups = [f"m{i // 2}" for i in range(40)]
    x = np.column_stack([y, rng.normal(size=40)])
    ridge = probe_table({"sW-layer": x}, {"y": y}, splits, groups, resamples=50)[0]
    values = np.zeros(40)
    values[splits["test"]] = ridge["test_predicted"]
    given = Predicted(values, {"epoch": 3}, extra=np.array([1.0, 2.0]))
    rows = probe_table({}, {"y": y}, splits, groups, resamples=50,
                       predicted={"NFN": {"y": given}})
    assert len(rows) == 1 and rows[0]["selected"] == {"epoch": 3} and "alpha" not in rows[0]
    assert rows[0]["extra_predicted"] == [1.0, 2.0]
    for key in ("r2_test", "tau_test", "r2_test_ci", "tau_test_ci", "test_predicted"):
        assert rows[0][key] == ridge[key]
    assert markdown_table([ridge, *rows]).splitlines()[0] == "| property | sW-layer | NFN |"
