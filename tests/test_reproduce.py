"""`sane reproduce` end to end at a tiny scale."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sane.cli import main
from sane.errors import ConfigError
from sane.reproduce import SCALES, Scale, run_reproduction

TINY = Scale("digits-cnn-s-hyp", models=6, epochs=2, train_size=300, max_abs=100.0,
             pretrain_preset="tiny", pretrain_epochs=1, batch_size=8, prompts=2, samples=4,
             keep=2, rounds=2, prior_std=1.0)


@pytest.mark.slow
def test_reproduction_writes_every_table_and_resumes(tmp_path, capsys):
    report = run_reproduction(tmp_path, TINY, progress=False).read_text()
    for heading in ("## Zoo", "## Token store", "## SANE pretraining",
                    "## Property prediction (SANE Table 1)", "## Sampling (SANE §5.2)",
                    "## Layer analysis (SANE §4)"):
        assert heading in report
    assert "| test_acc |" in report and "| prior + bootstrapping |" in report
    assert "| log_spectral_norm |" in report
    for folder in ("samples-subsampling", "samples-bootstrapping", "samples-prior-bootstrapping"):
        groups = json.loads((tmp_path / folder / "samples.json").read_text())["architectures"]
        assert len(list((tmp_path / folder).glob("sample_*.safetensors"))) == 2 * len(groups)
    state = tmp_path / "sane" / "training.safetensors"
    stamp = state.stat().st_mtime_ns
    run_reproduction(tmp_path, TINY, progress=False)  # a rerun trains nothing again
    assert state.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="another scale"):
        run_reproduction(tmp_path, dataclasses.replace(TINY, samples=8), progress=False)


def test_cli_lists_the_scales(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in SCALES)
