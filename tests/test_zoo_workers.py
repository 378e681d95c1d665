"""Groups trained in worker processes: same results with any number of workers, errors
reach the caller."""

import dataclasses

import pytest

from sane.errors import FormatError
from sane.zoo.generate import train_population
from sane.zoo.storage import Zoo
from zoo_helpers import checkpoints, crash_training, tiny_config


@pytest.mark.slow
def test_same_config_twice_gives_identical_checkpoints_with_any_number_of_workers(tmp_path):
    config = tiny_config(tmp_path)
    train_population(config, tmp_path / "a", progress=False)
    train_population(dataclasses.replace(config, workers=2), tmp_path / "b", progress=False)
    a, b = checkpoints(tmp_path / "a"), checkpoints(tmp_path / "b")
    assert len(a) == 6 * 4 and a == b
    rows = [Zoo.open(tmp_path / d).metrics("m0003") for d in ("a", "b")]
    assert rows[0] == rows[1]


def test_an_error_in_a_worker_reaches_the_caller_as_the_same_error(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    # Crash after epoch 0 and part of epoch 1 of the first group.
    crash_training(config, tmp_path / "zoo", monkeypatch, after=7)
    for file in (tmp_path / "zoo").rglob("resume_*.safetensors"):
        file.write_bytes(b"corrupt")
    with pytest.raises(FormatError, match="unreadable resume state"):
        train_population(dataclasses.replace(config, workers=2), tmp_path / "zoo",
                         progress=False)
