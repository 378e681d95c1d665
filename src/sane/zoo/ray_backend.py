"""Train groups of models as Ray tasks, on this machine or across a Ray cluster.

The Ray counterpart of :mod:`sane.zoo.workers`: each ``(group, start epoch)`` becomes one Ray
task that opens the zoo, sets the config's torch thread count and runs
:func:`~sane.zoo.group_training.train_group` from start to end, so the zoo is identical to
one trained by the local backend (same checkpoints and metrics, bit for bit on CPU). The
images are put once in Ray's object store and shared by every task.

Without an address, a local Ray instance with ``workers × threads`` CPUs is started and shut
down at the end. With an address (``auto``, ``ray://head:10001``...), the tasks run on that
cluster, which needs on every node: ``sane`` installed (same version, same torch), and the
zoo directory on a filesystem every node sees at the same absolute path (NFS, a shared
volume), because each task writes its models' checkpoints and metrics there. A node needs at
least ``threads`` CPUs to take a task. If Ray is already initialized in this process, that
instance is used and left running.

Crash safety is the zoo's: every file is written atomically, so a task cancelled or killed at
any point leaves a zoo that a rerun (with either backend) resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from sane.errors import ConfigError, SaneError
from sane.zoo.config import PopulationConfig
from sane.zoo.group_training import TrainingData, train_group
from sane.zoo.storage import ModelEntry, Zoo


def require_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`~sane.errors.ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'sane[ray]'") from None
    return ray


def run_on_ray(
    path: Path,
    config: PopulationConfig,
    data: TrainingData,
    tasks: Sequence[tuple[list[ModelEntry], int]],
    report: Callable[[float], None],
    address: str | None = None,
) -> None:
    """Train every ``(group, start epoch)`` of ``tasks`` as a Ray task, ``config.threads``
    CPUs each.

    ``address`` connects to a running cluster (see the module docstring); ``None`` starts a
    local instance. ``report(model_epochs)`` receives each group's model-epochs when its task
    finishes. An error in a task cancels the others and is raised here: a
    :class:`~sane.errors.SaneError` as itself, anything else as a RuntimeError naming the
    group.
    """
    ray = require_ray()
    started = not ray.is_initialized()
    if started and address is not None:
        ray.init(address=address)
    elif started:
        ray.init(num_cpus=max(config.workers, 1) * config.threads, include_dashboard=False,
                 log_to_driver=False)
    try:
        train = ray.remote(num_cpus=config.threads, max_retries=0)(_train_task)
        shared = ray.put(data)
        path = Path(path).resolve()  # the tasks' working directories are not ours
        pending = {train.remote(str(path), config, shared, group, start): (group, start)
                   for group, start in tasks}
        try:
            while pending:
                [done], _ = ray.wait(list(pending), num_returns=1)
                group, start = pending.pop(done)
                try:
                    ray.get(done)
                except ray.exceptions.RayError as error:
                    raise _driver_error(error, group) from None
                report(len(group) * (config.epochs - max(start, 0)))
        finally:
            for ref in pending:  # stop writing into a zoo that a rerun may resume
                ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()


def _train_task(path: str, config: PopulationConfig, data: TrainingData,
                group: list[ModelEntry], start: int) -> None:
    """One Ray task: train ``group`` from epoch ``start`` to the end into the zoo at ``path``."""
    torch.set_num_threads(config.threads)
    train_group(Zoo.open(Path(path)), group, start, data, config, lambda model_epochs: None)


def _driver_error(error: Any, group: list[ModelEntry]) -> Exception:
    """A task's error as the driver raises it: a :class:`SaneError` as itself (so the CLI
    prints one line), anything else (a crashed worker, a bug) as a RuntimeError naming the
    group, with the task's traceback."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, SaneError):
        return cause
    ids = ", ".join(e.id for e in group)
    return RuntimeError(f"training the group of models {ids} failed on Ray:\n{error}")
