"""One runtime for every stage that runs on several processes (pretrain, embed).

* :mod:`~cxrjepa.runtime.plan` -- how many processes on which devices (``--gpus`` / ``--nproc``), checked
  against this machine unless the plan is only printed (``--dry-run`` on a login node);
* :mod:`~cxrjepa.runtime.launch` -- the torchrun command, the launch spec every worker starts from (the
  resolved config and the stage's inputs and options, written to a private folder that the launcher
  removes), and running it;
* :mod:`~cxrjepa.runtime.group` -- a worker's ranks and device, the process group, barrier / broadcast /
  all-reduce, and each rank's share of a list of work units;
* :mod:`~cxrjepa.runtime.signals` -- SIGTERM / SIGUSR1 (preemption) as a stop request every rank agrees on.

What a stage does with its processes (DDP / FSDP for pretrain, which rows each rank embeds) stays in the stage.
"""

from cxrjepa.runtime.group import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cpu_count,
    in_worker,
    init_worker,
    shard,
    shutdown,
    worker_info,
)
from cxrjepa.runtime.launch import LaunchSpec, dry_run_command, format_command, launch, launch_command
from cxrjepa.runtime.plan import ProcessPlan, plan_processes
from cxrjepa.runtime.signals import StopSignals

__all__ = [
    "DistInfo",
    "LaunchSpec",
    "ProcessPlan",
    "StopSignals",
    "all_reduce_mean",
    "barrier",
    "broadcast_object",
    "cpu_count",
    "dry_run_command",
    "format_command",
    "in_worker",
    "init_worker",
    "launch",
    "launch_command",
    "plan_processes",
    "shard",
    "shutdown",
    "worker_info",
]
