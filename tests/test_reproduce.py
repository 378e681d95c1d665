"""`sane reproduce` end to end at a tiny scale."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from sane.cli import main
from sane.errors import ConfigError
from sane.reproduce import SCALES, Scale, run_reproduction

TINY = Scale("digits-cnn-s-hyp", models=6, epochs=2, train_size=300, max_abs=100.0,
             pretrain_preset="tiny", pretrain_epochs=1, batch_size=8, prompts=2, samples=4,
             keep=2, rounds=2, prior_std=1.0, store_epochs=(0, 1), finetune_epochs=2,
             transfer=("cnn_s_deep",), transfer_prompts=2, transfer_epochs=1)


@pytest.mark.slow
def test_reproduction_writes_every_table_and_resumes(tmp_path, capsys):
    report = run_reproduction(tmp_path, TINY, progress=False).read_text()
    for heading in ("## Zoo", "## Token store", "## SANE pretraining",
                    "## Property prediction (SANE Table 1)", "## Model generation (SANE Table 3)",
                    "### Memorization controls", "## Layer analysis (SANE §4)",
                    "## Transfer to new architectures (SANE Tables 15-17)", "### cnn_s_deep"):
        assert heading in report
    assert "| Acc |" in report and "| log_spectral_norm |" in report
    assert "Kendall τ:" in report
    assert "12 checkpoints (epochs 0-1)" in report  # 6 models × the first two epochs
    assert "| split | models | whole-model R² |" in report
    table = report.split("## Model generation")[1]
    header = next(line for line in table.splitlines() if line.startswith("| epoch |"))
    assert re.sub(r" \(\d+\)", "", header) == (
        "| epoch | training from scratch | fine-tuned prompts | SANE_KDE30 | SANE_SUB | "
        "SANE_BOOT | SANE_GAUSS |")
    assert [line.split(" |")[0] for line in table.splitlines() if line.startswith("| ")][1:4] \
        == ["| 0", "| 1", "| 2"]
    assert all(f"| {name} |" in table for name in ("SANE_SUB", "SANE_GAUSS"))
    assert (tmp_path / "generation.png").read_bytes()[:4] == b"\x89PNG"
    for folder in ("samples-kde30", "samples-sub", "samples-boot", "samples-gauss"):
        report_json = json.loads((tmp_path / folder / "samples.json").read_text())
        groups = report_json["architectures"]
        assert len(list((tmp_path / folder).glob("sample_*.safetensors"))) == 2 * len(groups)
        assert all(p["epoch"] == 1 for p in report_json["prompts"])  # the last stored epoch
    moved = json.loads((tmp_path / "transfer-cnn_s_deep" / "samples" / "samples.json").read_text())
    assert {g["architecture"]["name"] for g in moved["architectures"]} == {"cnn_s_deep"}
    assert len(moved["prompts"]) == 2 and all(p["epoch"] == 1 for p in moved["prompts"])
    kept = len(moved["samples"])  # keep 2 per prompt architecture (activations may differ)
    transfer = report.split("### cnn_s_deep")[1]
    assert (f"| epoch | random init ({kept}) | prompts (2) | SANE sampled ({kept}) |"
            in transfer)
    assert (tmp_path / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    kde30 = json.loads((tmp_path / "samples-kde30" / "samples.json").read_text())
    assert len(kde30["prompts"]) == 2  # the best 30 % of 4 training models, rounded up
    state = tmp_path / "sane" / "training.safetensors"
    stamp = state.stat().st_mtime_ns
    run_reproduction(tmp_path, TINY, progress=False)  # a rerun trains nothing again
    assert state.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="another scale"):
        run_reproduction(tmp_path, dataclasses.replace(TINY, samples=8), progress=False)


def test_a_scale_names_known_protocols_and_fine_tunes_against_sub():
    with pytest.raises(ConfigError, match=r"protocols must be some of \['KDE30', 'SUB'"):
        dataclasses.replace(TINY, protocols=("SUB", "DDPM"))
    with pytest.raises(ConfigError, match="include SUB or set finetune_epochs = 0"):
        dataclasses.replace(TINY, protocols=("BOOT",), transfer=())
    with pytest.raises(ConfigError, match="the transfer stage fine-tunes"):
        dataclasses.replace(TINY, transfer_epochs=0)
    assert dataclasses.replace(TINY, protocols=("BOOT",), finetune_epochs=0,
                               transfer=()).protocols == ("BOOT",)


def test_cli_lists_the_scales(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in SCALES)
