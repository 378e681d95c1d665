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
             keep=2, rounds=2, prior_std=1.0, store_epochs=(0, 1), finetune_epochs=2,
             transfer=("cnn_s_deep",), transfer_prompts=2, transfer_epochs=1, seeds=2,
             frontier=(0.1, 1.0))


@pytest.mark.slow
def test_reproduction_writes_every_table_and_resumes(tmp_path, capsys):
    report = run_reproduction(tmp_path, TINY, progress=False).read_text()
    for heading in ("## Zoo", "## Token store", "## SANE pretraining",
                    "## Property prediction (SANE Table 1)", "## Model generation (SANE Table 3)",
                    "### Against copies of the prompts", "## Layer analysis (SANE §4)",
                    "## Transfer to new architectures (SANE Tables 15-17)", "### cnn_s_deep"):
        assert heading in report
    assert "| Acc |" in report and "| log_spectral_norm |" in report
    assert "Kendall τ:" in report
    assert "12 checkpoints (epochs 0-1)" in report  # 6 models × the first two epochs
    assert "| split | models | whole-model R² |" in report
    table = report.split("## Model generation")[1]
    assert "selected on validation, reported on test" in table
    assert "| group (models) | epoch 0 | epoch 1 | epoch 2 |" in table
    groups = [line.split(" (")[0] for line in table.split("### Against")[0].splitlines()
              if line.startswith("| ") and not line.startswith("| group")]
    assert groups == ["| training from scratch", "| KDE30 prompts", "| SANE_KDE30",
                      "| SUB prompts", "| SANE_SUB", "| BOOT prompts", "| SANE_BOOT",
                      "| SANE_GAUSS"]
    assert all(f"| {name} |" in table for name in ("SANE_SUB", "SANE_GAUSS"))
    assert "| noise | per-tensor noise | averages | SANE − strongest [95 %] |" in table
    assert (tmp_path / "generation.png").read_bytes()[:4] == b"\x89PNG"
    for folder in ("samples-kde30", "samples-sub", "samples-boot", "samples-gauss"):
        for seed in (0, 1):
            report_json = json.loads((tmp_path / folder / f"seed-{seed}" / "samples.json")
                                     .read_text())
            assert report_json["request"]["config"]["seed"] == seed
            groups = report_json["architectures"]
            assert len(list((tmp_path / folder / f"seed-{seed}").glob("sample_*.safetensors"))
                       ) == 2 * len(groups)
            assert all(p["epoch"] == 1 for p in report_json["prompts"])  # the last stored
    assert "### The novelty–quality frontier" in report
    assert (tmp_path / "frontier" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    moved = json.loads((tmp_path / "transfer-cnn_s_deep" / "samples" / "seed-0" / "samples.json")
                       .read_text())
    assert {g["architecture"]["name"] for g in moved["architectures"]} == {"cnn_s_deep"}
    assert len(moved["prompts"]) == 2 and all(p["epoch"] == 1 for p in moved["prompts"])
    kept = len(moved["samples"])  # keep 2 per prompt architecture (activations may differ)
    transfer = report.split("### cnn_s_deep")[1]
    assert f"| random init ({kept}) |" in transfer and "| prompts (2) |" in transfer
    assert (tmp_path / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    kde30 = json.loads((tmp_path / "samples-kde30" / "seed-0" / "samples.json").read_text())
    assert len(kde30["prompts"]) == 2  # the best 30 % of 4 training models, rounded up
    state = tmp_path / "sane" / "training.safetensors"
    stamp = state.stat().st_mtime_ns
    run_reproduction(tmp_path, TINY, progress=False)  # a rerun trains nothing again
    assert state.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="another scale"):
        run_reproduction(tmp_path, dataclasses.replace(TINY, samples=8), progress=False)


def test_a_scale_names_known_protocols_seeds_and_a_frontier():
    with pytest.raises(ConfigError, match=r"protocols must be some of \['KDE30', 'SUB'"):
        dataclasses.replace(TINY, protocols=("SUB", "DDPM"))
    with pytest.raises(ConfigError, match="the transfer stage fine-tunes"):
        dataclasses.replace(TINY, transfer_epochs=0)
    with pytest.raises(ConfigError, match="seeds must be at least 1"):
        dataclasses.replace(TINY, seeds=0)
    with pytest.raises(ConfigError, match="at least two bandwidths"):
        dataclasses.replace(TINY, frontier=(0.1,))
    assert dataclasses.replace(TINY, protocols=("BOOT",), transfer=()).protocols == ("BOOT",)


def test_cli_lists_the_scales(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in SCALES)
