"""The `sane` command's contract (help, version, error reporting) and atomic writes."""

import subprocess
import sys

import pytest

from sane import __version__, atomic
from sane.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sane {__version__}"
    assert main([]) == 0
    assert "zoo" in capsys.readouterr().out


def test_user_errors_are_one_line_without_traceback(capsys):
    assert main(["data", "info", "no-such-dataset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sane: error: unknown dataset 'no-such-dataset'")
    assert "Traceback" not in err and err.count("\n") == 1


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "sane", "--version"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip() == f"sane {__version__}"


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"a": 1})

    def fail(tmp):
        tmp.write_text("partial")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(target, fail)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_write_json_rejects_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "x.json", {"a": float("nan")})
    assert not (tmp_path / "x.json").exists()
