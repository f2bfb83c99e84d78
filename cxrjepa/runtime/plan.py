"""How many processes on which devices: the ``--gpus`` / ``--nproc`` settings of a stage, checked against
this machine -- unless the plan is only to be printed (``--dry-run`` on a login node without GPUs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cxrjepa.core.errors import UsageError


@dataclass(frozen=True)
class ProcessPlan:
    """``nproc`` processes on each of ``nnodes`` nodes; one GPU each when ``cuda``, else CPU (gloo)."""

    nproc: int = 1
    cuda: bool = False
    nnodes: int = 1

    @property
    def world(self) -> int:
        return self.nproc * self.nnodes

    @property
    def launches(self) -> bool:
        """Whether this plan needs a launcher (more than one process in all)."""
        return self.world > 1

    def describe(self) -> str:
        """``8 GPUs``, ``CPU (2 gloo processes)``, ``8 GPUs per node x 2 nodes``."""
        n = self.nproc
        what = f"{n} GPU{'s' if n > 1 else ''}" if self.cuda else f"CPU ({n} gloo process{'es' if n > 1 else ''})"
        return what + (f" per node x {self.nnodes} nodes" if self.nnodes > 1 else "")

    def check_devices(self, asked: str | None = None, *, cpu_hint: str = "--gpus 0") -> None:
        """Refuse, in one sentence, a plan this machine cannot run (GPUs asked for, none or too few here).

        ``asked``: the option that asked for them, as the message shows it (default ``--gpus N``);
        ``cpu_hint``: the option that runs on the CPU instead."""
        if not self.cuda:
            return
        asked = asked or f"--gpus {self.nproc}"
        if not torch.cuda.is_available():
            raise UsageError(
                f"{asked} asks for GPUs but CUDA is not available here; use {cpu_hint} to run on the "
                "CPU (or --dry-run to see the launch without running it)."
            )
        if self.nproc > torch.cuda.device_count():
            raise UsageError(f"{asked} asks for {self.nproc} GPUs but {torch.cuda.device_count()} are visible here.")


def plan_processes(gpus: int | None, nproc: int | None, *, nnodes: int = 1, check: bool = True) -> ProcessPlan:
    """The plan for pretrain's ``--gpus`` / ``--nproc`` / ``--nnodes``.

    ``gpus`` None: one GPU when CUDA is available, else the CPU. ``check=False`` (dry runs) plans the GPUs
    asked for without looking for them, so a login node prints the launch of a GPU node."""
    if gpus is not None and gpus < 0:
        raise UsageError("--gpus must be 0 (CPU) or a positive number of GPUs.")
    if nnodes < 1:
        raise UsageError("--nnodes must be at least 1.")
    if gpus is None:
        gpus = 1 if torch.cuda.is_available() else 0
    if nproc is not None:
        if nproc < 1:
            raise UsageError("--nproc must be at least 1.")
        if gpus > 0 and nproc != gpus:
            raise UsageError("With GPUs, --nproc must equal --gpus (one process per GPU); leave it out.")
    plan = ProcessPlan(nproc or max(gpus, 1), gpus > 0, nnodes)
    if check:
        plan.check_devices()
    return plan
