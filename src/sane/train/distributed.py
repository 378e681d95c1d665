"""Data-parallel pretraining: the processes ``torchrun`` starts, and how they share a batch.

``torchrun --nproc-per-node N -m sane pretrain ...`` (or ``torchrun ... $(which sane)``)
starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in
their environment; :func:`process_group` joins them into one group (gloo on CPU, NCCL on CUDA,
where rank ``r`` computes on ``cuda:LOCAL_RANK``). A process started without ``torchrun`` is a
group of one and touches no ``torch.distributed`` state.

Every rank draws the same global batch (the window sampler is seeded) and computes on its
share, a contiguous slice of ``batch_size / N`` windows (:meth:`Ranks.share`); the model is
wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages gradients over
the ranks. So that the averaged gradient is the gradient of the *global* batch's loss, each
rank backpropagates ``N`` times its own part of that loss (:func:`sane.train.pretraining`'s
``_step_loss``): its squared errors over the global count of masked values, and the NT-Xent
of the gathered projections of all ranks, in which only its own rows carry gradients.
Rank 0 alone writes the run directory, under its writer lock (:mod:`sane.locking`: the ranks
are one writer); the others wait for it at barriers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sane.errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` among ``world_size`` processes (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes the run directory (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of ``batch_size`` (a multiple of the world size)."""
        part = batch_size // self.world_size
        return slice(self.rank * part, (self.rank + 1) * part)

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise ConfigError(f"batch_size {batch_size} does not split over {self.world_size} "
                              "processes; choose a multiple of the number of processes")

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a group."""
        if self.distributed and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        return device


def environment_ranks() -> Ranks:
    """The ranks ``torchrun`` put in the environment; one process when there are none."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as error:
        raise ConfigError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers ({error})"
                          ) from error
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} does not lie in a world of WORLD_SIZE {world}")
    return Ranks(rank, world, local)


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Join the process group of ``ranks`` for the duration (nothing for one process; a group
    that already exists, e.g. the caller's, is used and left as it is)."""
    if not ranks.distributed or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def from_main(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Rank 0's ``value`` on every rank (``value`` itself for one process): what one rank
    decided, such as a measured precision, shared so that all ranks compute alike."""
    if ranks.distributed:
        value = value.clone()
        dist.broadcast(value, src=0)
    return value


def total(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum of a detached ``value`` over the ranks (the value itself for one process)."""
    value = value.detach().clone()
    if ranks.distributed:
        dist.all_reduce(value)
    return value


def gather_rows(local: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """``local [b, d]`` of every rank stacked in rank order, ``[N·b, d]``; only this rank's
    rows carry gradients (its share of a loss over all rows)."""
    if not ranks.distributed:
        return local
    parts = [torch.empty_like(local) for _ in range(ranks.world_size)]
    dist.all_gather(parts, local.detach().contiguous())
    parts[ranks.rank] = local
    return torch.cat(parts)
