"""Processes for sharded embedding: spawned locally (``--gpus N`` / ``processes``) or started by torchrun.

Ranks only need to agree on who does which rows and to wait for each other, so the process group is
always gloo (no NCCL collectives: the features never cross processes; each rank writes its own zarr
chunks). Rank ``r`` of ``w`` takes the ``r``-th contiguous slice of the pending units.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cxrjepa.core import console
from cxrjepa.core.errors import CxrjepaError


@dataclass
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Rank | None:
    """The rank a launcher (torchrun, a cluster scheduler) gave this process, if any."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    return Rank(rank, world, int(os.environ.get("LOCAL_RANK", rank)))


def init_group(r: Rank) -> None:
    if r.world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", rank=r.rank, world_size=r.world)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (a picklable object)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def my_units(units: Sequence[int], r: Rank) -> list[int]:
    """The contiguous slice of ``units`` that rank ``r`` writes."""
    parts = np.array_split(np.asarray(list(units), dtype=np.int64), r.world)
    return [int(u) for u in parts[r.rank]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(index: int, world: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(index), "LOCAL_RANK": str(index)})
    r = Rank(index, world, index)
    init_group(r)
    try:
        fn(r, *args)
        barrier()
    except CxrjepaError as exc:
        console.error(f"rank {index}: {exc.message}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable, world: int, *args: Any) -> None:
    """Run ``fn(Rank, *args)`` in ``world`` new processes joined by a gloo group; wait for all of them."""
    import torch.multiprocessing as mp

    port = free_port()
    try:
        mp.start_processes(_entry, args=(world, port, fn, args), nprocs=world, join=True, start_method="spawn")
    except mp.ProcessRaisedException as exc:
        last = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        raise CxrjepaError(f"An embed worker process failed ({last}); finished rows are kept, rerun to resume.") from None
    except mp.ProcessExitedException as exc:
        raise CxrjepaError(f"An embed worker process died (exit code {exc.exit_code}); finished rows are kept, rerun to resume.") from None


def device_for(kind: str, r: Rank) -> torch.device:
    if kind == "cuda":
        torch.cuda.set_device(r.local_rank)
        return torch.device("cuda", r.local_rank)
    return torch.device("cpu")
