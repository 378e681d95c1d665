"""Crash safety: rerunning an interrupted zoo resumes it to the checkpoints of an
uninterrupted run; a finished zoo is left alone, another config refused."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sane.cli import main
from sane.errors import ConfigError, FormatError
from sane.locking import LOCK_FILE
from sane.zoo.config import PopulationConfig, SearchSpace, enumerate_models, load_config
from sane.zoo.generate import plan_groups, train_population
from sane.zoo.storage import Zoo
from zoo_helpers import TINY_TOML, checkpoints, crash_training, tiny_config


def test_rerun_of_a_finished_zoo_changes_nothing_and_other_configs_are_refused(tmp_path):
    config = tiny_config(tmp_path)
    train_population(config, tmp_path / "zoo", progress=False)
    def stamps():  # of the zoo's files (the writer lock records each writer's pid)
        return {f: f.stat().st_mtime_ns for f in (tmp_path / "zoo").rglob("*")
                if f.is_file() and f.name != LOCK_FILE}

    before = stamps()
    train_population(config, tmp_path / "zoo", progress=False)
    assert stamps() == before
    with pytest.raises(ConfigError, match=r"differs in: epochs stored 3, requested 4\)"):
        train_population(dataclasses.replace(config, epochs=4), tmp_path / "zoo")


def test_crash_while_writing_an_epoch_resumes_to_identical_checkpoints(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    train_population(config, tmp_path / "whole", progress=False)
    first_group = plan_groups(enumerate_models(config), config.models_per_group)[0]
    # Epochs 0 and 1 of the first group written, then epoch 2 of one model: the next crashes.
    crash_at = 2 * len(first_group) + 2
    crash_training(config, tmp_path / "resumed", monkeypatch, after=crash_at)
    partial = Zoo.open(tmp_path / "resumed")
    last = sorted(partial.last_epoch(e.id) for e in first_group)
    assert last == [1] * (len(first_group) - 1) + [2]  # killed halfway through the group
    train_population(config, tmp_path / "resumed", progress=False)
    assert checkpoints(tmp_path / "resumed") == checkpoints(tmp_path / "whole")
    assert not list((tmp_path / "resumed").rglob("resume_*"))


def test_resume_state_round_trip_and_errors(tmp_path):
    entries = enumerate_models(PopulationConfig(space=SearchSpace(seed_range=(1, 3))))
    zoo = Zoo.create(tmp_path, entries, dataset={"name": "digits"})
    state = {"step": torch.tensor(7), "exp_avg.w": torch.randn(3, 2)}
    zoo.save_resume_state("m0001", 4, state, "adam")
    zoo.save_resume_state("m0001", 5, state, "adam")
    loaded = zoo.load_resume_state("m0001", 4, "adam")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())
    assert zoo.resume_epochs("m0001") == [4, 5]
    with pytest.raises(FormatError, match="resume state is for 'adam', expected 'sgd'"):
        zoo.load_resume_state("m0001", 4, "sgd")
    with pytest.raises(FormatError, match=r"resume_003.safetensors: resume state not found"):
        zoo.load_resume_state("m0001", 3, "adam")
    zoo.remove_resume_state("m0001", keep=5)
    assert zoo.resume_epochs("m0001") == [5]
    zoo.remove_resume_state("m0001")
    assert zoo.resume_epochs("m0001") == []


@pytest.mark.slow
def test_sigkill_and_rerun_gives_the_checkpoints_of_an_uninterrupted_run(tmp_path):
    file = tmp_path / "tiny.toml"
    file.write_text('mode = "random"\n' + TINY_TOML.replace("workers = 1", "workers = 2"))
    args = ["zoo", "train", str(file), "--epochs", "6", "--models", "6", "--out"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "sane", *args, str(tmp_path / "killed")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    models = tmp_path / "killed" / "models"
    while time.monotonic() < deadline and proc.poll() is None:
        rows = [f.read_text() for f in models.glob("*/metrics.json")]
        if any(len(json.loads(r)) >= 3 for r in rows):  # epoch 2 of some model written
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    zoo = Zoo.open(tmp_path / "killed")
    assert any(zoo.last_epoch(e.id) != 6 for e in zoo.models), "killed too late to test"

    assert main([*args, str(tmp_path / "killed")]) == 0
    train_population(load_config(file, epochs=6, models=6), tmp_path / "whole", progress=False)
    assert checkpoints(tmp_path / "killed") == checkpoints(tmp_path / "whole")
    assert len(checkpoints(tmp_path / "whole")) == 6 * 7
    assert not list((tmp_path / "killed" / "models").rglob("resume_*"))
    assert not list((tmp_path / "killed" / "models").rglob(".*.tmp"))
