"""Model selection by held-out loss (SALT): evaluate, keep the best student, export it.

The held-out items (a seeded share of the patients, never trained on: :func:`cxrjepa.pretrain.data.split_holdout`)
are turned once into fixed batches -- whole frames (middle windows for clips) and masks from a dedicated
seed -- so every evaluation measures the same thing. Whenever the mean held-out loss improves, the
objective's selection modules (SALT: encoder and predictor) are written to ``checkpoints/best/`` (weights
first, ``state.json`` last and atomically); the export then takes the encoder from there.

Resuming: the best state is kept only if it was taken at or before the step the run resumes from (a later
one is recomputed identically), and the evaluation history comes back from ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
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

BEST = "best"
HOLDOUT_SEED_STREAM = 6
EVAL_BATCH = 64


def best_dir(run: str | Path) -> Path:
    return Path(run) / ckpt.CHECKPOINTS / BEST


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
        self.history = [(int(r["step"]), float(r["holdout_loss"])) for r in metrics
                        if "holdout_loss" in r and int(r["step"]) <= start]
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
            folder = best_dir(self.run)
            tmp = folder.with_name(f".{BEST}.tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            for name, sd in tensors.items():
                safetensors.torch.save_file(sd, str(tmp / f"{name}.safetensors"), metadata={"format": ckpt.FORMAT})
            atomic_write_json(tmp / ckpt.STATE, {"format": ckpt.FORMAT, "step": step, "holdout_loss": loss,
                                                 "modules": sorted(tensors)})
            fsync_dir(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
            fsync_dir(folder.parent)
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
