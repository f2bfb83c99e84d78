"""Schedules as pure functions of the step, so a resumed run continues them exactly.

Learning rate: linear warm-up from ``start_lr`` to ``lr``, then cosine to ``final_lr``. Weight decay: cosine
from ``weight_decay[0]`` to ``weight_decay[1]`` (rising, 0.04 -> 0.4 in I-JEPA). Objectives add their own
(the EMA momentum of I-JEPA ramps linearly with :func:`linear`).
"""

from __future__ import annotations

import math


def linear(step: int, total: int, start: float, end: float) -> float:
    """``start`` at step 0, ``end`` at step ``total`` (and after)."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return start + (end - start) * t


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half a cosine from ``start`` (step 0) to ``end`` (step ``total``)."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(step: int, total: int, warmup: int, start: float, peak: float, final: float) -> float:
    if step < warmup:
        return linear(step, warmup, start, peak)
    return cosine(step - warmup, total - warmup, peak, final)


class Schedules:
    """LR and weight decay for each step of a run of ``total`` steps."""

    def __init__(self, optim, total: int):
        self.optim = optim
        self.total = total
        self.warmup = int(round(optim.warmup_fraction * total))

    def lr(self, step: int) -> float:
        o = self.optim
        return warmup_cosine(step, self.total, self.warmup, o.start_lr, o.lr, o.final_lr)

    def wd(self, step: int) -> float:
        return cosine(step, self.total, *self.optim.weight_decay)

    def at(self, step: int) -> dict[str, float]:
        return {"lr": self.lr(step), "wd": self.wd(step)}
