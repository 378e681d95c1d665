"""Train groups of models in parallel worker processes.

Each worker runs :func:`~sane.zoo.group_training.train_group`. Groups are independent, so
``W`` processes of one thread each keep ``W`` cores busy without the synchronization of
multithreaded kernels, whose cost grows when other jobs share the machine. Each group is
trained from start to end by one worker with the config's thread count, so the results do not
depend on the number of workers or on which worker took which group. The images are loaded
once and shared with the workers through shared memory.

Workers die with the main process (Linux: ``PR_SET_PDEATHSIG``; elsewhere they check their
parent at every step), so a killed run never leaves a worker writing into a zoo that a rerun
is resuming.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from sane import errors
from sane.zoo.config import PopulationConfig
from sane.zoo.group_training import TrainingData, train_group
from sane.zoo.storage import ModelEntry, Zoo

# Seconds between progress messages of a worker (keeps the queue quiet).
_REPORT_EVERY = 0.5


def run_in_workers(
    path: Path,
    config: PopulationConfig,
    data: TrainingData,
    tasks: Sequence[tuple[list[ModelEntry], int]],
    workers: int,
    report: Callable[[float], None],
) -> None:
    """Train every ``(group, start epoch)`` of ``tasks`` in ``workers`` processes.

    ``report(model_epochs)`` receives the workers' progress. An error in a worker stops the
    others and is raised here.
    """
    for split in (data.train, data.val, data.test):
        for tensor in split:
            tensor.share_memory_()
    context = mp.get_context("spawn")
    todo, events = context.Queue(), context.Queue()
    for task in tasks:
        todo.put(task)
    for _ in range(workers):
        todo.put(None)
    processes = [
        context.Process(target=_work, args=(path, config, data, todo, events, os.getpid()),
                        daemon=True)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        finished = 0
        while finished < workers:
            try:
                kind, value = events.get(timeout=1.0)
            except queue.Empty:
                dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a training worker exited with code {dead[0]}") from None
                continue
            if kind == "progress":
                report(value)
            elif kind == "done":
                finished += 1
            else:
                raise _rebuild(*value)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()


def _work(path: Path, config: PopulationConfig, data: TrainingData, todo: Any, events: Any,
          parent: int) -> None:
    """A worker: train groups from ``todo`` until it yields ``None``."""
    _die_with(parent)
    torch.set_num_threads(config.threads)
    pending, last = 0.0, time.monotonic()

    def report(model_epochs: float) -> None:
        nonlocal pending, last
        if os.getppid() != parent:  # the main process is gone: stop writing at once
            os._exit(1)
        pending += model_epochs
        if time.monotonic() - last > _REPORT_EVERY:
            events.put(("progress", pending))
            pending, last = 0.0, time.monotonic()

    try:
        zoo = Zoo.open(path)
        while (task := todo.get()) is not None:
            group, start = task
            train_group(zoo, group, start, data, config, report)
        events.put(("progress", pending))
        events.put(("done", None))
    except BaseException as error:  # sent to the main process, which raises it
        text = "".join(traceback.format_exception(error))
        events.put(("error", (type(error).__name__, str(error), text)))


def _rebuild(name: str, message: str, text: str) -> Exception:
    """The worker's error as the main process raises it: the same :class:`SaneError` class
    (so the CLI prints one line), anything else as a RuntimeError with the traceback."""
    kind = getattr(errors, name, None)
    if isinstance(kind, type) and issubclass(kind, errors.SaneError):
        return kind(message)
    return RuntimeError(f"training worker failed:\n{text}")


def _die_with(parent: int) -> None:
    """Make the kernel kill this process when its parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
