"""Processes and devices: torchrun launch, worker initialisation, DDP / FSDP2 wrapping.

* ``--gpus N`` (or ``--nproc N``) on one node re-launches the same command through
  ``python -m torch.distributed.run --standalone --nproc-per-node N``; multi-node adds ``--nnodes``,
  ``--node-rank`` and ``--rdzv-endpoint`` (static rendezvous: node 0's host:port).
* A process started by torchrun or a scheduler (WORLD_SIZE, RANK and LOCAL_RANK set) is a worker: it joins
  the process group (NCCL on CUDA, gloo on CPU) and trains its share of every global batch.
* DDP by default; FSDP2 (``fully_shard`` on every transformer block, then the root) for huge/giant
  encoders or ``runtime.strategy: fsdp``. Frozen modules (EMA target, teacher) are sharded the same way.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cxrjepa.core.errors import UsageError

WORKER_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass
class DistInfo:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = torch.device("cpu")
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


def plan_processes(gpus: int | None, nproc: int | None) -> tuple[int, bool]:
    """(processes per node, use CUDA) for the CLI's ``--gpus`` / ``--nproc``."""
    cuda = torch.cuda.is_available()
    if gpus is None:
        gpus = 1 if cuda else 0
    if gpus < 0:
        raise UsageError("--gpus must be 0 (CPU) or a positive number of GPUs.")
    if gpus > 0 and not cuda:
        raise UsageError(f"--gpus {gpus} asks for GPUs but CUDA is not available here; use --gpus 0 to train on the CPU.")
    if gpus > 0 and cuda and gpus > torch.cuda.device_count():
        raise UsageError(f"--gpus {gpus} asks for more GPUs than the {torch.cuda.device_count()} visible here.")
    if nproc is not None:
        if nproc < 1:
            raise UsageError("--nproc must be at least 1.")
        if gpus > 0 and nproc != gpus:
            raise UsageError("With GPUs, --nproc must equal --gpus (one process per GPU); leave it out.")
    return (nproc or max(gpus, 1)), gpus > 0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def launch_command(
    argv: list[str], nproc: int, *, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None
) -> list[str]:
    """The torchrun command that runs ``cxrjepa <argv>`` as ``nproc`` workers on this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1 and not rdzv_endpoint:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise UsageError("Multi-node runs need --rdzv-endpoint HOST:PORT (node 0's address and a free port).")
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--rdzv-endpoint={rdzv_endpoint}"]
    cmd += [f"--nproc-per-node={nproc}", "-m", "cxrjepa", *argv]
    return cmd


def format_command(cmd: list[str]) -> str:
    return shlex.join(cmd)


def run_launch(cmd: list[str], *, cpu_threads: int | None = None) -> int:
    """Run the torchrun command and return its exit code (Ctrl-C reaches the workers through torchrun).

    ``cpu_threads``: OMP threads per worker for CPU runs (torchrun's default is 1), unless the user set
    OMP_NUM_THREADS."""
    env = dict(os.environ)
    for key in WORKER_ENV:  # the launcher sets these for its workers
        env.pop(key, None)
    if cpu_threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(cpu_threads)
    proc = subprocess.Popen(cmd, env=env)

    def forward(_signum, _frame):  # preemption: torchrun passes SIGTERM on to the workers, which checkpoint
        proc.send_signal(signal.SIGTERM)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def init_worker(use_cuda: bool) -> DistInfo:
    """Join the process group of a torchrun / scheduler launch, or set up a single process."""
    if not in_worker():
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        return DistInfo(device=device)
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    use_cuda = use_cuda and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if use_cuda else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(world, rank, local_rank, local_world, device, backend)


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world
    return value


def broadcast_object(obj, info: DistInfo):
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_strategy(strategy: str, model_size: str, info: DistInfo) -> str:
    """``none`` (one process), ``ddp`` or ``fsdp``."""
    if info.world == 1:
        return "none"
    if strategy == "auto":
        return "fsdp" if model_size in ("huge", "giant") else "ddp"
    return strategy


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """Every transformer block of ``module`` (the members of its ``blocks`` ModuleLists)."""
    out = []
    for name, child in module.named_modules():
        if isinstance(child, nn.ModuleList) and name.split(".")[-1] == "blocks":
            out.extend(child)
    return out


def compile_blocks(module: nn.Module) -> None:
    """``torch.compile`` each transformer block in place (parameter names are unchanged)."""
    for blk in transformer_blocks(module):
        blk.compile()


def set_activation_checkpointing(module: nn.Module, enable: bool) -> None:
    for child in module.modules():
        if child is not module and hasattr(child, "set_grad_checkpointing") and hasattr(child, "grad_checkpointing"):
            child.set_grad_checkpointing(enable)


#: methods besides ``forward`` that run a sharded module (FSDP2 only hooks ``forward`` by default)
FORWARD_METHODS = ("tokens",)


def shard(module: nn.Module, mp_dtype: torch.dtype | None) -> None:
    """FSDP2: ``fully_shard`` every transformer block, then the root (whose ``tokens`` method also gathers
    the root's parameters, like ``forward``)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    kwargs = {}
    if mp_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32)
    for blk in transformer_blocks(module):
        fully_shard(blk, **kwargs)
    fully_shard(module, **kwargs)
    for name in FORWARD_METHODS:
        if callable(getattr(module, name, None)):
            register_fsdp_forward_method(module, name)


def wrap_student(student: nn.Module, strategy: str, info: DistInfo):
    """The callable the training step runs: the module itself, a DDP wrapper, or the FSDP-sharded module."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(student, device_ids=ids, gradient_as_bucket_view=True)
    return student


def grad_sync(wrapped, strategy: str, sync: bool):
    """Context for one micro-batch: skip the gradient all-reduce except on the last one."""
    if strategy == "ddp" and not sync:
        return wrapped.no_sync()
    if strategy == "fsdp":
        wrapped.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()
