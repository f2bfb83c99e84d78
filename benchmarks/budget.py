"""CPU-second budgets for the quality benchmarks (``quality.py``, ``segmentation.py``).

The machine these benchmarks run on is shared, so a budget in wall seconds gives every contender whatever the
other jobs leave it, and a budget in steps favours the objective with the cheapest step. The budget here is
CPU seconds: the user + system time of a pretraining process and everything it waited for (its data-loader
workers), read with ``resource.getrusage(RUSAGE_CHILDREN)`` around the command. Each contender is calibrated
on each data set with two short runs (``SHORT`` and ``LONG`` steps) that give its CPU seconds per step and its
fixed cost (imports, data, model, monitors, export); ``train.steps`` is then set so the real run fits the
budget, and the real run's measured CPU seconds are reported next to it.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

#: steps of the two calibration runs: the difference gives the cost of a step, the short run the fixed cost
SHORT, LONG = 2, 12
#: fewer steps than this is no pretraining: a budget that leaves less is refused
MIN_STEPS = 10


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children and everything they waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    """CPU seconds (user + system) of this process, all its threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """Wall and CPU seconds from creation to ``stop()``; ``cpu`` reads children (subprocesses, the default) or
    ``self_cpu`` (work done in this process)."""

    def __init__(self, cpu: Callable[[], float] = children_cpu):
        self._cpu = cpu
        self.t0, self.c0 = time.time(), cpu()
        self.wall_s = self.cpu_s = 0.0

    def stop(self) -> Meter:
        self.wall_s, self.cpu_s = time.time() - self.t0, self._cpu() - self.c0
        return self


def parse_budgets(values: list[str], names: list[str], default: float = 300.0) -> dict[str, float]:
    """``--budget-cpu`` values -> CPU seconds per data set: a bare number is everyone's budget, ``NAME=S`` one
    set's (``["300", "kermany=600"]``). Unknown names and non-positive budgets end the run with one sentence."""
    base, per = default, {}
    for v in values:
        name, sep, num = v.rpartition("=")
        try:
            seconds = float(num)
        except ValueError:
            raise SystemExit(f"--budget-cpu takes SECONDS or NAME=SECONDS, not '{v}'.") from None
        if not seconds > 0:
            raise SystemExit(f"--budget-cpu must be positive, not '{v}'.")
        if not sep:
            base = seconds
        elif name not in names:
            raise SystemExit(f"--budget-cpu: unknown data set '{name}' (known: {', '.join(names)}).")
        else:
            per[name] = seconds
    return {n: per.get(n, base) for n in names}


@dataclass
class Calibration:
    """CPU cost model of one contender on one data set: ``startup + per_step * steps`` CPU seconds."""

    budget: float
    per_step: float
    startup: float
    steps: int
    #: [[steps, measured CPU s], ...] of the calibration runs
    points: list

    def predicted(self, steps: int | None = None) -> float:
        return self.startup + self.per_step * (self.steps if steps is None else steps)


def fit(points: list[tuple[int, float]], budget: float) -> Calibration:
    """The line through two (steps, CPU s) points, and the most steps whose predicted cost fits ``budget``."""
    (s0, c0), (s1, c1) = sorted(points)
    if not c1 > c0:
        # under heavy contention OpenMP spin-waits can make a short run cost more CPU than a longer one
        raise SystemExit(
            f"Calibration failed: {s1} steps cost {c1:.1f} CPU s, not more than {s0} steps ({c0:.1f} CPU s); "
            "the machine is too busy to measure, rerun when it is quieter (or with --threads 1)."
        )
    per_step = (c1 - c0) / (s1 - s0)
    startup = max(c0 - per_step * s0, 0.0)
    steps = math.floor((budget - startup) / per_step)
    if steps < MIN_STEPS:
        raise SystemExit(
            f"A budget of {budget:.0f} CPU s leaves {max(steps, 0)} pretraining steps after the fixed cost of "
            f"{startup:.0f} CPU s ({per_step:.2f} CPU s a step); give at least "
            f"{math.ceil(startup + MIN_STEPS * per_step)} CPU s."
        )
    return Calibration(budget, per_step, startup, steps, [list(p) for p in points])


#: a real run over its budget by more than this share is marked in the tables (the calibration ran under other load)
TOLERANCE = 0.10


def over_budget(cpu_s: float, budget: float) -> str:
    """'' when ``cpu_s`` is within ``TOLERANCE`` of ``budget``, else ' (N % over budget)' for the tables."""
    over = cpu_s / budget - 1.0
    return f" ({over:.0%} over budget)" if over > TOLERANCE else ""


def calibrate(run: Callable[[int, Path], float], folder: Path, budget: float) -> Calibration:
    """Calibrate with ``run(steps, out) -> CPU seconds`` (a fresh pretraining of that many steps into ``out``)
    at ``SHORT`` and ``LONG`` steps, fit the cost line, and keep it in ``folder/calibration.json``: a rerun with
    the same budget reuses it (so it gets the same steps and its finished pretraining is not redone)."""
    cache = folder / "calibration.json"
    if cache.exists():
        old = json.loads(cache.read_text())
        if old.get("budget") == budget:
            return Calibration(**old)
        points = [tuple(p) for p in old["points"]]  # a new budget: same cost line, new steps
    else:
        points = []
        for steps in (SHORT, LONG):
            out = folder / f"calibration-{steps}"
            points.append((steps, run(steps, out)))
            shutil.rmtree(out, ignore_errors=True)  # only its cost was wanted
    cal = fit(points, budget)
    folder.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(asdict(cal), indent=1))
    return cal
