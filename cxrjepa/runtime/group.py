"""A worker's place in a launch: ranks, device, process group and the collectives the stages use.

A process started by torchrun or a scheduler (WORLD_SIZE, RANK and LOCAL_RANK set) is a worker; any other
process is a single process of world 1. Collectives are no-ops outside a process group, so stage code calls
them unconditionally.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

#: the variables torchrun (or a scheduler) sets for each worker
WORKER_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")

T = TypeVar("T")


@dataclass
class DistInfo:
    """Where this process stands: its ranks, its device and (in a process group) the backend."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")
    #: nccl or gloo when this process joined a process group; None otherwise
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def in_worker() -> bool:
    """Started by torchrun / a scheduler that set WORLD_SIZE, RANK and LOCAL_RANK."""
    return all(k in os.environ for k in WORKER_ENV)


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which schedulers set; else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_info(use_cuda: bool) -> DistInfo:
    """This process's ranks (from the launcher's environment; world 1 otherwise) and device, without joining
    a process group: for workers that share nothing but the files they write (embed's launched ranks).

    With ``use_cuda`` (and CUDA present) the device is ``cuda:LOCAL_RANK`` and is made the current device."""
    if in_worker():
        world, rank, local_rank = (int(os.environ[k]) for k in WORKER_ENV)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    else:
        world, rank, local_rank, local_world = 1, 0, 0, 1
    use_cuda = use_cuda and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return DistInfo(world, rank, local_rank, local_world, device)


def init_worker(use_cuda: bool, *, backend: str | None = None) -> DistInfo:
    """Join the process group of a torchrun / scheduler launch (``env://``: torchrun's own rendezvous store,
    so no port is picked here), or set up a single process.

    The backend is NCCL on CUDA and gloo on the CPU unless ``backend`` says otherwise (embed uses gloo
    everywhere: its ranks only exchange small objects)."""
    info = worker_info(use_cuda)
    if not in_worker():
        return info
    cuda = info.device.type == "cuda"
    info.backend = backend or ("nccl" if cuda else "gloo")
    if not dist.is_initialized():
        kwargs = {"device_id": info.device} if cuda and info.backend == "nccl" else {}
        dist.init_process_group(backend=info.backend, **kwargs)
    return info


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (a no-op outside a process group)."""
    if not info.distributed:
        return
    if info.backend == "nccl":
        dist.barrier(device_ids=[info.device.index])
    else:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``value`` over the ranks (a new tensor; ``value`` itself outside a process group)."""
    if info.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world
    return value


def broadcast_object(obj: T, info: DistInfo, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shard(items: Sequence[Any], index: int, count: int) -> list[Any]:
    """The ``index``-th of ``count`` contiguous, near-equal slices of ``items`` (rank r of w takes
    ``shard(units, r, w)``; the slices cover ``items`` once, in order)."""
    if not 0 <= index < count:
        raise ValueError(f"slice {index} of {count} does not exist")
    parts = np.array_split(np.arange(len(items)), count)[index]
    return [items[int(i)] for i in parts]
