"""Checkpoints: ``RUN/checkpoints/step-NNNNNN/``.

A folder holds one ``<name>.safetensors`` per module of the objective (encoder, predictor, EMA target...),
``optimizer.pt`` (AdamW state keyed by parameter name, written with ``torch.save`` and read back with
``torch.load(weights_only=True)``: tensors and plain values only, never pickled code), and ``state.json``
(step, epoch, sampler position, schedules, objective state, RNG derivation). Every weight and optimizer
file is written to a temporary name, fsynced and renamed, and the folder fsynced, before ``state.json`` is
written (atomically, last): a folder without it is unfinished and ignored, and one with it holds its files
on the disk even after a power cut. Resume takes the newest complete one.

:class:`Checkpointer` decides when a run is saved (every ``runtime.checkpoint_every`` steps, at the last
step, on a stop signal), keeps the newest ``runtime.keep_last`` and restores the newest on resume.

With FSDP the full (unsharded) state is gathered to CPU, so a checkpoint loads under any strategy and any
number of processes.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from cxrjepa.core import console
from cxrjepa.core.atomic import atomic_path, atomic_write_json, fsync_dir
from cxrjepa.core.errors import ArtifactError, reading
from cxrjepa.runtime import DistInfo, barrier

CHECKPOINTS = "checkpoints"
STATE = "state.json"
OPTIMIZER = "optimizer.pt"
FORMAT = "cxrjepa.checkpoint/1"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def step_dir(run: str | Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(run: str | Path, *, complete: bool = True) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the checkpoints of ``run``, oldest first (complete ones only by default)."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and (not complete or _readable_state(child)):
            out.append((int(m.group(1)), child))
    return sorted(out)


def _readable_state(folder: Path) -> bool:
    try:
        return isinstance(json.loads((folder / STATE).read_text()), dict)
    except (OSError, ValueError):
        return False


def latest_checkpoint(run: str | Path) -> Path | None:
    found = list_checkpoints(run)
    return found[-1][1] if found else None


def read_state(folder: str | Path) -> dict:
    try:
        return json.loads((Path(folder) / STATE).read_text())
    except (OSError, ValueError):
        raise ArtifactError(
            f"The checkpoint '{folder}' is incomplete or corrupt; delete it to resume from an older one."
        ) from None


def _options(sharded: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True) if sharded else StateDictOptions()


def module_state(module: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """Full state dict on CPU (a collective with FSDP: every rank must call it)."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(module, options=_options(True))
    else:
        state = module.state_dict()
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def optimizer_state(student: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(student, optimizer, options=_options(sharded))


def save_checkpoint(
    run: str | Path,
    step: int,
    modules: dict[str, nn.Module],
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    *,
    write: bool = True,
    sharded: bool = False,
    keep_last: int = 2,
) -> Path:
    """Save a checkpoint of ``step`` (all ranks call this; only the one with ``write`` writes files)."""
    folder = step_dir(run, step)
    tensors = {name: module_state(m, sharded) for name, m in modules.items()}
    optim = optimizer_state(student, optimizer, sharded)
    if not write:
        return folder
    if folder.exists():  # an unfinished attempt at this step
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_modules(folder, tensors)
    with atomic_path(folder / OPTIMIZER) as tmp:
        torch.save(optim, tmp)
    fsync_dir(folder)
    atomic_write_json(folder / STATE, {"format": FORMAT, "step": step, "modules": sorted(tensors), **state})
    fsync_dir(folder.parent)  # the new step folder is on the disk before older ones are pruned
    prune(run, keep_last)
    return folder


def write_modules(folder: Path, tensors: dict[str, dict[str, torch.Tensor]], *, name_modules: bool = True) -> None:
    """``<name>.safetensors`` per module in ``folder``, each on the disk (fsynced) under its final name
    (``name_modules``: the module's name in the file's metadata too)."""
    for name, sd in tensors.items():
        metadata = {"format": FORMAT, "module": name} if name_modules else {"format": FORMAT}
        with atomic_path(folder / f"{name}.safetensors") as tmp:
            safetensors.torch.save_file(sd, str(tmp), metadata=metadata)


def prune(run: str | Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints; drop older ones and unfinished leftovers."""
    complete = list_checkpoints(run)
    if not complete:
        return
    keep = {p for _, p in complete[-keep_last:]}
    newest = complete[-1][0]
    for step, folder in list_checkpoints(run, complete=False):
        if folder not in keep and step <= newest:
            shutil.rmtree(folder, ignore_errors=True)


def load_checkpoint(
    folder: str | Path,
    modules: dict[str, nn.Module],
    student: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    sharded: bool = False,
) -> dict:
    """Load weights and optimizer state in place (every rank reads the files) and return ``state.json``."""
    folder = Path(folder)
    state = read_state(folder)
    for name, module in modules.items():
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            raise ArtifactError(f"The checkpoint '{folder}' has no {name} weights; it was made by another objective.")
        with reading(path, "checkpoint file"):
            sd = safetensors.torch.load_file(str(path))
        if sharded:
            from torch.distributed.checkpoint.state_dict import set_model_state_dict

            set_model_state_dict(module, sd, options=_options(True))
        else:
            module.load_state_dict(sd)
    if optimizer is not None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        with reading(folder / OPTIMIZER, "checkpoint file"):
            osd = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True)
        set_optimizer_state_dict(student, optimizer, osd, options=_options(sharded))
    return state


class Checkpointer:
    """Saves and restores a training run; owns the cadence and the retention of its checkpoints.

    A checkpoint is written every ``every`` steps, at the run's last step and when a stop is requested
    (preemption); the newest ``keep_last`` complete ones are kept. Every rank calls :meth:`maybe_save` and
    :meth:`restore` (the state gathers are collectives under FSDP); only rank 0 writes.
    """

    def __init__(
        self,
        run: str | Path,
        objective,
        optimizer: torch.optim.Optimizer,
        info: DistInfo,
        *,
        every: int,
        keep_last: int,
        sharded: bool,
        state: Callable[[int], dict],
    ):
        self.run = Path(run)
        self.objective = objective
        self.optimizer = optimizer
        self.info = info
        self.every = every
        self.keep_last = keep_last
        self.sharded = sharded
        #: the JSON-able training state of a step (sampler, schedules, objective...) for ``state.json``
        self.state = state

    def restore(self) -> int:
        """Load the newest complete checkpoint into the objective and optimizer; the step to start from."""
        folder = latest_checkpoint(self.run)
        if folder is None:
            return 0
        state = load_checkpoint(
            folder, self.objective.checkpoint_modules(), self.objective.student, self.optimizer, sharded=self.sharded
        )
        self.objective.load_extra_state(state.get("objective", {}))
        step = int(state["step"])
        if self.info.is_main:
            console.info(f"Resuming from {folder.relative_to(self.run)} (step {step}).")
        return step

    def due(self, step: int, *, last: bool, stop: bool) -> bool:
        return step % self.every == 0 or last or stop

    def save(self, step: int) -> Path:
        folder = save_checkpoint(
            self.run,
            step,
            self.objective.checkpoint_modules(),
            self.objective.student,
            self.optimizer,
            self.state(step),
            write=self.info.is_main,
            sharded=self.sharded,
            keep_last=self.keep_last,
        )
        barrier(self.info)
        return folder

    def maybe_save(self, step: int, *, last: bool, stop: bool = False) -> bool:
        """Save ``step`` if it is due (``last``: the run's final step; ``stop``: a stop was requested);
        whether it saved."""
        if not self.due(step, last=last, stop=stop):
            return False
        self.save(step)
        return True
