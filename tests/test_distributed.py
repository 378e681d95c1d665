"""Data-parallel pretraining under torchrun: 2 CPU processes (gloo) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sane.errors import ConfigError
from sane.train import pretrain
from sane.train.distributed import Ranks, environment_ranks

SCRIPT = Path(__file__).with_name("pretrain_ranks.py")
sys.path.insert(0, str(SCRIPT.parent))
from pretrain_ranks import config  # noqa: E402


def torchrun(*args: object, processes: int = 2, **environment: str
             ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **environment}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc-per-node={processes}", str(SCRIPT), *map(str, args)],
        env=env, capture_output=True, text=True, timeout=300)


def history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())


@pytest.fixture(scope="module")
def two_processes(random_store, tmp_path_factory):
    """A 2-epoch run of 2 processes: ``(run, weights folder)``."""
    out = tmp_path_factory.mktemp("ddp")
    done = torchrun(random_store.path, out / "run", out / "weights", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "run", out / "weights"


@pytest.mark.slow
def test_two_processes_keep_identical_weights_and_match_one_process(
    random_store, two_processes, tmp_path
):
    run, weights = two_processes
    ranks = [load_file(str(weights / f"rank-{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert json.loads((run / "run.json").read_text())["world_size"] == 2

    single = pretrain(random_store.path, tmp_path / "single", config(2), progress=False)
    # Each process computes half of every global batch: the losses are the global batch's.
    for a, b in zip(history(run), single.history, strict=True):
        for key in ("train_loss", "train_reconstruction", "train_contrast", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(ranks[0][key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_an_interrupted_run_of_two_processes_resumes_bit_for_bit(
    random_store, two_processes, tmp_path
):
    run, _ = two_processes
    crashed = torchrun(random_store.path, tmp_path / "run", tmp_path / "weights", 2, 2)
    assert crashed.returncode != 0
    assert [r["epoch"] for r in history(tmp_path / "run")] == [1]
    resumed = torchrun(random_store.path, tmp_path / "run", tmp_path / "weights", 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (load_file(str(r / "training.safetensors")) for r in (run, tmp_path / "run"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_a_run_of_two_processes_does_not_resume_in_one(random_store, two_processes):
    run, _ = two_processes
    message = (f"{run} was pretrained by 2 process(es) and cannot resume with 1: each process "
               "computes its share of every batch, so the weights depend on their number; "
               "resume with `torchrun --nproc-per-node 2` or choose another --out")
    with pytest.raises(ConfigError) as error:
        pretrain(random_store.path, run, config(2), progress=False)
    assert str(error.value) == message


@pytest.mark.slow
def test_auto_precision_is_rank_0_s_measurement_on_every_rank(random_store, tmp_path):
    # rank 0 times fp32 slower, rank 1 bf16: both ranks train in rank 0's choice
    done = torchrun(random_store.path, tmp_path / "run", tmp_path / "weights", 1,
                    SLOW="fp32,bf16")
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = [(tmp_path / "weights" / f"precision-{r}.txt").read_text() for r in (0, 1)]
    assert chosen == ["bf16", "bf16"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["pretrain"]["precision"] == record["auto_precision"]["chosen"] == "bf16"
    assert record["auto_precision"]["seconds_per_step"]["fp32"] > 100


def test_ranks_from_the_environment_and_batch_shares(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert environment_ranks() == Ranks(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    ranks = environment_ranks()
    assert ranks == Ranks(2, 4, 0) and not ranks.main and ranks.distributed
    assert ranks.share(32) == slice(16, 24)
    assert ranks.device(torch.device("cuda")) == torch.device("cuda", 0)
    assert ranks.device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="batch_size 30 does not split over 4 processes"):
        ranks.check_batch(30)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK 4 does not lie in a world of WORLD_SIZE 4"):
        environment_ranks()
