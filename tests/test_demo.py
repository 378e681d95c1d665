"""`sane demo` end to end: the README's first command."""

import pytest

from sane.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "48 checkpoints × 48 tokens × 201 values" in report  # 8 models × epochs 0..5
    assert (tmp_path / "zoo" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = tmp_path / "zoo" / "models" / "m0000" / "epoch_005.safetensors"
    tokens = tmp_path / "store" / "tokens.npy"
    stamps = checkpoint.stat().st_mtime_ns, tokens.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path)]) == 0  # a rerun reuses what is on disk
    assert (checkpoint.stat().st_mtime_ns, tokens.stat().st_mtime_ns) == stamps
