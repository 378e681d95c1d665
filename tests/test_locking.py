"""One writer per directory: a run, zoo or store another process is writing refuses a second
writer with a message naming the directory and the holder's pid, and a lock left by a killed
process (SIGKILL) does not block the next writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sane
from sane.cli import main
from sane.errors import BusyError
from sane.locking import LOCK_FILE, writer_lock
from sane.train import PretrainConfig, pretrain
from sane.zoo.generate import train_population
from sane.zoo.modelzoos.reader import import_modelzoos
from test_modelzoos import published_states, ray_line, ray_params, trial_name, write_trial
from zoo_helpers import tiny_config

TINY = PretrainConfig(preset="tiny", epochs=1, batch_size=8, model={"d_model": 32, "n_layers": 1})


def hold_lock(directory: Path) -> subprocess.Popen:
    """A process that takes ``directory``'s writer lock through the library and sleeps."""
    code = textwrap.dedent(f"""
        import time
        from sane.locking import writer_lock
        with writer_lock({str(directory)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(sane.__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=env)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.fixture
def held(tmp_path):
    """A directory whose writer lock another process holds; that process."""
    directory = tmp_path / "busy"
    holder = hold_lock(directory)
    yield directory, holder
    holder.kill()
    holder.wait()


def test_a_second_writer_is_refused_with_the_directory_and_the_holder_s_pid(held):
    directory, holder = held
    with pytest.raises(BusyError, match=rf"{directory}: another process is writing it "
                                        rf"\(pid {holder.pid} on "):
        with writer_lock(directory):
            pass


def test_every_writing_command_refuses_a_locked_directory(held, random_store, tmp_path,
                                                         capsys):
    directory, holder = held
    assert main(["prepare", str(random_store.zoo_path), "--out", str(directory)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"sane: error: {directory}: another process is writing it "
                              f"(pid {holder.pid} on ")
    with pytest.raises(BusyError, match=str(holder.pid)):
        pretrain(random_store.path, directory, TINY, progress=False)
    with pytest.raises(BusyError, match=str(holder.pid)):
        train_population(tiny_config(tmp_path), directory, progress=False)
    params = ray_params(seed=1)
    write_trial(tmp_path / "src", trial_name(0, 1), params,
                published_states("CNN", params, range(2), 1),
                [ray_line(params, it, {"test_acc": 0.5}) for it in range(2)])
    with pytest.raises(BusyError, match=str(holder.pid)):
        import_modelzoos(tmp_path / "src", directory, progress=False)
    assert sorted(p.name for p in directory.iterdir()) == [LOCK_FILE]  # nothing was written


def test_one_process_is_one_writer_too(tmp_path):
    with writer_lock(tmp_path), pytest.raises(BusyError, match=f"pid {os.getpid()} on "):
        with writer_lock(tmp_path):
            pass
    with writer_lock(tmp_path):  # released on leaving
        pass


def test_a_lock_left_by_a_killed_writer_does_not_block_the_next(random_store, tmp_path):
    directory = tmp_path / "run"
    holder = hold_lock(directory)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (directory / LOCK_FILE).read_text().startswith(f"{holder.pid} on ")  # left behind
    result = pretrain(random_store.path, directory, TINY, progress=False)  # claims the run
    assert len(result.history) == 1 and (directory / "run.json").is_file()
    assert (directory / LOCK_FILE).read_text().startswith(f"{os.getpid()} on ")


def test_a_file_where_a_directory_belongs_is_named(tmp_path, random_store, capsys):
    file = tmp_path / "store"
    file.write_text("not a directory")
    assert main(["prepare", str(random_store.zoo_path), "--out", str(file)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"sane: error: {file}: cannot write there")


def test_a_command_refused_before_writing_leaves_no_directory(tmp_path):
    with pytest.raises(RuntimeError), writer_lock(tmp_path / "new"):
        raise RuntimeError("a config error found after the lock was taken")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(RuntimeError), writer_lock(tmp_path / "old"):
        raise RuntimeError
    assert (tmp_path / "old").is_dir()  # not created by the lock: left as it was
