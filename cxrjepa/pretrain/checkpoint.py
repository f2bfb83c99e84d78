"""Checkpoints: ``RUN/checkpoints/step-NNNNNN/``.

A folder holds one ``<name>.safetensors`` per module of the objective (encoder, predictor, EMA target...),
``optimizer.pt`` (AdamW state keyed by parameter name, written with ``torch.save`` and read back with
``torch.load(weights_only=True)``: tensors and plain values only, never pickled code), and ``state.json``
(step, epoch, sampler position, schedules, objective state, RNG derivation). ``state.json`` is written
last and atomically: a folder without it is unfinished and ignored. Resume takes the newest complete one.

With FSDP the full (unsharded) state is gathered to CPU, so a checkpoint loads under any strategy and any
number of processes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from cxrjepa.core.atomic import atomic_write_json, fsync_dir
from cxrjepa.core.errors import ArtifactError, reading

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
        raise ArtifactError(f"The checkpoint '{folder}' is incomplete or corrupt; delete it to resume from an older one.") from None


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
    for name, sd in tensors.items():
        tmp = folder / f".{name}.safetensors.tmp"
        safetensors.torch.save_file(sd, str(tmp), metadata={"format": FORMAT, "module": name})
        tmp.replace(folder / f"{name}.safetensors")
    tmp = folder / f".{OPTIMIZER}.tmp"
    torch.save(optim, tmp)
    tmp.replace(folder / OPTIMIZER)
    fsync_dir(folder)
    atomic_write_json(folder / STATE, {"format": FORMAT, "step": step, "modules": sorted(tensors), **state})
    prune(run, keep_last)
    return folder


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
