"""`sane demo` end to end: the README's first command."""

import pytest

from sane import SANE
from sane.cli import main
from sane.stages.sample import SampleResult


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# sane demo: digits-cnn-s-seed")
    # 34 models × epochs 0..5; validation and test splits of at least 5 models
    assert "204 checkpoints (every epoch) × 48 tokens × 201 values" in report
    assert "per split: train 138, val 30, test 36" in report
    assert (tmp_path / "zoo" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "6 epochs (" in report and "validation reconstruction loss" in report
    assert "| split | models | whole-model R² | test accuracy: original | decoded |" in report
    assert "| property | W | sW-layer | SANE |" in report
    assert (tmp_path / "probes" / "embeddings.npy").is_file()
    assert "SUB keeps the 5 best of 20 draws around the first 5 training models" in report
    assert "| SANE_SUB |" in report and "SANE_KDE30" not in report
    assert "Layer analysis" not in report and "Fine-tuned" not in report
    # What the demo is for: sampled models that work, on the split nothing was chosen on.
    for seed in (0, 1):
        result = SampleResult.load(tmp_path / "samples-sub" / f"seed-{seed}")
        assert len(result.samples) == 5 and result.report_split == "test"
        assert result.kept_mean > 0.5  # chance is 0.1
        assert result.kept_mean > result.prompt_mean - 0.2
    assert SANE.from_pretrained(tmp_path / "sane").config.token_size == 201
    files = [tmp_path / "zoo" / "models" / "m0000" / "epoch_005.safetensors",
             tmp_path / "store" / "tokens.npy", tmp_path / "sane" / "training.safetensors"]
    stamps = [f.stat().st_mtime_ns for f in files]
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path)]) == 0  # a rerun reuses what is on disk
    assert [f.stat().st_mtime_ns for f in files] == stamps
