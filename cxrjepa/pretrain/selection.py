"""Model selection by held-out loss (SALT): evaluate, keep the best student, export it.

The held-out items (a seeded share of the patients, never trained on: :func:`cxrjepa.pretrain.data.split_holdout`)
are turned once into fixed batches -- whole frames (middle windows for clips) and masks from a dedicated
seed -- so every evaluation measures the same thing. Whenever the mean held-out loss improves, the
objective's selection modules (SALT: encoder and predictor) become ``checkpoints/best/``; the export then
takes the encoder from there.

``checkpoints/best`` is a link to one of two folders, ``best-a`` and ``best-b``. A new best is written to the
one the link does not point to (weights fsynced, ``state.json`` last), then a new link is renamed over the
old one -- an atomic swap -- and the old folder removed. A kill at any moment leaves ``best`` pointing to
the old best or to the new one, complete on the disk.

Resuming: the best state is kept only if it was taken at or before the step the run resumes from (a later
one is recomputed identically), and the evaluation history comes back from ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from cxrjepa.core.atomic import atomic_write_json, fsync_dir
from cxrjepa.core.errors import reading
from cxrjepa.pretrain import checkpoint as ckpt
from cxrjepa.pretrain.data import Collator, evaluation_images, spread
from cxrjepa.runtime import DistInfo, barrier

BEST = "best"
#: the two folders ``best`` links to in turn
SLOTS = ("best-a", "best-b")
HOLDOUT_SEED_STREAM = 6
EVAL_BATCH = 64


def best_dir(run: str | Path) -> Path:
    """``RUN/checkpoints/best``: the link to the folder holding the best student."""
    return Path(run) / ckpt.CHECKPOINTS / BEST


def write_best(run: str | Path, tensors: dict[str, dict[str, torch.Tensor]], state: dict) -> Path:
    """Make ``tensors`` (module name -> state dict) and ``state`` the run's best, by an atomic swap of the
    ``best`` link (see the module docstring); returns the folder written."""
    root = Path(run) / ckpt.CHECKPOINTS
    link = root / BEST
    root.mkdir(parents=True, exist_ok=True)
    if link.is_dir() and not link.is_symlink():
        # a run begun before ``best`` became a link: adopt its folder as a slot (two renames, once per run)
        shutil.rmtree(root / SLOTS[0], ignore_errors=True)
        os.rename(link, root / SLOTS[0])
        _point(root, SLOTS[0])
    current = os.readlink(link) if link.is_symlink() else None
    slot = SLOTS[1] if current == SLOTS[0] else SLOTS[0]
    folder = root / slot
    if folder.exists():  # a leftover, never the folder ``best`` points to
        shutil.rmtree(folder)
    folder.mkdir()
    ckpt.write_modules(folder, tensors, name_modules=False)
    fsync_dir(folder)
    atomic_write_json(folder / ckpt.STATE, {"format": ckpt.FORMAT, **state, "modules": sorted(tensors)})
    _point(root, slot)
    if current is not None and current != slot:
        shutil.rmtree(root / current, ignore_errors=True)
    return folder


def _point(root: Path, slot: str) -> None:
    """Point ``root/best`` at ``slot``: a new relative link renamed over the old one, then the folder fsynced."""
    tmp = root / f".{BEST}.link"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(slot, tmp)
    os.replace(tmp, root / BEST)
    fsync_dir(root)


def read_best(run: str | Path) -> dict | None:
    try:
        state = json.loads((best_dir(run) / ckpt.STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and "step" in state else None


def holdout_batches(config, data, items: np.ndarray, masks, max_items: int, cache=None, extras=None) -> list[dict]:
    """The fixed held-out batches (collated on the CPU, stored dtype)."""
    chosen = spread(items, max_items)
    ds = evaluation_images(config, data, chosen, cache, extras=extras)
    seed = int(np.random.SeedSequence([config.train.seed, HOLDOUT_SEED_STREAM]).generate_state(1)[0])
    out = []
    for j, lo in enumerate(range(0, len(chosen), EVAL_BATCH)):
        n = min(EVAL_BATCH, len(chosen) - lo)
        collate = Collator(masks, n, seed)
        out.append(collate([ds[(j, p, lo + p)] for p in range(n)]))
    return out


@dataclass
class HoldoutSelection:
    """Evaluates the held-out loss and keeps the best student of a run."""

    run: Path
    batches: list[dict]
    items: int
    patients: int
    fraction: float
    every: int
    export_best: bool
    best_step: int | None = None
    best_loss: float = math.inf
    history: list[tuple[int, float]] = field(default_factory=list)

    def due(self, done: int, total: int) -> bool:
        """Evaluations happen every ``every`` steps and at the planned end (never at an early stop, so a run
        stopped by --max-steps and continued evaluates exactly where an uninterrupted one does)."""
        return (self.every > 0 and done % self.every == 0) or done == total

    def restore(self, start: int, metrics: list[dict]) -> None:
        """State at ``start`` (resume): the best taken at or before it, and the evaluations up to it."""
        self.history = [
            (int(r["step"]), float(r["holdout_loss"]))
            for r in metrics
            if "holdout_loss" in r and int(r["step"]) <= start
        ]
        best = read_best(self.run)
        if best is not None and int(best["step"]) <= start:
            self.best_step, self.best_loss = int(best["step"]), float(best["holdout_loss"])
        else:
            self.best_step, self.best_loss = None, math.inf

    @torch.no_grad()
    def evaluate(self, objective, to_device, autocast) -> float:
        """Mean held-out loss of the objective's student (eval mode; back to train mode after)."""
        student = objective.student
        was_training = student.training
        student.eval()
        total, count = 0.0, 0
        try:
            for batch in self.batches:
                b = to_device(batch)
                with autocast():
                    loss = objective.holdout_loss(b)
                n = int(b["images"].shape[0])
                total += float(loss) * n
                count += n
        finally:
            student.train(was_training)
        return total / max(count, 1)

    def update(self, step: int, loss: float, modules: dict, *, write: bool, sharded: bool) -> bool:
        """Record an evaluation; save the selection modules as the best when the loss improved."""
        self.history.append((step, loss))
        if not loss < self.best_loss:
            return False
        self.best_step, self.best_loss = step, loss
        tensors = {name: ckpt.module_state(m, sharded) for name, m in modules.items()}  # collective with FSDP
        if write:
            write_best(self.run, tensors, {"step": step, "holdout_loss": loss})
        return True

    def best_encoder_state(self) -> dict[str, torch.Tensor] | None:
        """The best student's encoder weights (from ``checkpoints/best``), or None."""
        path = best_dir(self.run) / "encoder.safetensors"
        if self.best_step is None or not path.is_file():
            return None
        with reading(path, "checkpoint file"):
            return safetensors.torch.load_file(str(path))

    def summary(self, exported_step: int) -> dict:
        """``contents.selection`` of the run manifest."""
        return {
            "metric": "holdout_loss",
            "holdout_fraction": self.fraction,
            "holdout_items": self.items,
            "holdout_patients": self.patients,
            "evaluated_items": sum(int(b["images"].shape[0]) for b in self.batches),
            "every": self.every,
            "best_step": self.best_step,
            "best_loss": None if self.best_step is None else self.best_loss,
            "exported": "best" if self.export_best and self.best_step is not None else "last",
            "exported_step": exported_step,
            "evaluations": [[s, round(v, 6)] for s, v in self.history],
            "best": f"{ckpt.CHECKPOINTS}/{BEST}" if self.best_step is not None else None,
        }


class SelectionHook:
    """Held-out selection as a metrics hook (:class:`cxrjepa.pretrain.metrics.Hook`): at the steps
    :meth:`HoldoutSelection.due` names, evaluate the student, add ``holdout_loss`` to the row and keep a
    new best. Hooks run before the step's checkpoint, so a resume never loses a best."""

    def __init__(
        self, selection: HoldoutSelection, objective, to_device, autocast, info: DistInfo, *, total: int, sharded: bool
    ):
        self.selection = selection
        self.objective = objective
        self.to_device = to_device
        self.autocast = autocast
        self.info = info
        self.total = total
        self.sharded = sharded

    def due(self, step: int) -> bool:
        return self.selection.due(step, self.total)

    def __call__(self, step: int, row: dict) -> None:
        held = self.selection.evaluate(self.objective, self.to_device, self.autocast)
        row["holdout_loss"] = held
        self.selection.update(
            step, held, self.objective.selection_modules(), write=self.info.is_main, sharded=self.sharded
        )
        barrier(self.info)
