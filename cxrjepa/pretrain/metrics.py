"""The metrics processor of the training loop: which steps are logged, what their rows hold, where rows go.

A step is logged every ``runtime.log_every`` steps, at the last step, and whenever a hook is due. Its row
holds the loss (mean over the ranks and the steps since the previous row), the schedules, the objective's
scalars, the gradient norm, throughput, MFU and peak GPU memory; the due hooks add their columns; then the
row goes to the sinks (on rank 0) and to the console.

Two extension points, for what plugs into training later (trackers, in-training probes):

* a **hook** (:class:`Hook`) chooses its steps and adds columns to their rows. Every rank runs it, so it may
  use collectives (the collapse monitor's forward pass is one under FSDP). The built-in hooks are the
  collapse monitor (:class:`cxrjepa.pretrain.monitors.FeatureMonitor`) and SALT's held-out selection
  (:class:`cxrjepa.pretrain.selection.SelectionHook`); the trainer makes extra ones from factories that
  receive it (and so reach the objective, its encoder, the device and the process group).
* a **sink** (:class:`Sink`) receives every finished row on rank 0: ``metrics.jsonl`` / ``metrics.csv``
  (:class:`cxrjepa.pretrain.monitors.MetricsLog`), or the experiment trackers (TensorBoard, MLflow, W&B:
  :class:`cxrjepa.tracking.TrackerSet`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from cxrjepa.core import console
from cxrjepa.core.errors import CxrjepaError
from cxrjepa.pretrain.monitors import format_row
from cxrjepa.runtime import DistInfo, all_reduce_mean


class Hook(Protocol):
    """Adds columns to the rows of the steps it is due at; runs on every rank."""

    def due(self, step: int) -> bool: ...

    def __call__(self, step: int, row: dict) -> None: ...


class Sink(Protocol):
    """Receives every finished metrics row (rank 0 only)."""

    def write(self, row: dict) -> None: ...

    def close(self) -> None: ...


@dataclass
class StepResult:
    """What one optimizer step hands the metrics processor."""

    #: the step's loss, averaged over its micro-batches (detached, on the device: no host sync per step)
    loss: torch.Tensor
    #: matrix FLOPs of the step (for MFU)
    flops: float
    #: the gradient norm before clipping; computed at logged steps and whenever gradients are clipped
    grad_norm: torch.Tensor | None
    #: the schedules the step ran with (lr, wd)
    schedule: dict
    #: the objective's scalars after the step (EMA momentum...)
    scalars: dict


class MetricsProcessor:
    """Decides which steps are logged, computes their rows, runs the due hooks and writes the rows."""

    def __init__(
        self,
        info: DistInfo,
        *,
        batch_size: int,
        log_every: int,
        last_step: int,
        epoch_at: Callable[[int], float],
        peak_flops: float | None = None,
        hooks: Sequence[Hook] = (),
        sinks: Sequence[Sink] = (),
    ):
        self.info = info
        self.batch_size = batch_size
        self.log_every = log_every
        self.last_step = last_step
        self.epoch_at = epoch_at
        self.peak_flops = peak_flops
        self.hooks = list(hooks)
        self.sinks = list(sinks)
        self.last_row: dict = {}
        self._task = None
        self._window_loss = torch.zeros((), device=info.device)
        self._window_steps, self._window_flops = 0, 0.0
        self._t0 = self._t_start = time.perf_counter()

    # ------------------------------------------------------------------ cadence
    def should_log(self, step: int) -> bool:
        """Whether ``step`` (1-based: the number of steps done) gets a row."""
        return step % self.log_every == 0 or step == self.last_step or any(h.due(step) for h in self.hooks)

    # ------------------------------------------------------------------ a step
    def record(self, result: StepResult) -> None:
        """Add a finished step to the current window (every step, logged or not)."""
        self._window_loss += result.loss
        self._window_steps += 1
        self._window_flops += result.flops
        if self._task is not None:
            self._task.advance(1)

    def log(self, step: int, result: StepResult) -> dict:
        """The row of ``step``: computed, completed by the due hooks, written; the window starts again.
        Every rank calls this (the loss mean and the hooks may be collectives)."""
        mean_loss = float(all_reduce_mean(self._window_loss / self._window_steps, self.info))
        now = time.perf_counter()
        elapsed = max(now - self._t0, 1e-9)
        device = self.info.device
        row = {
            "step": step,
            "epoch": round(self.epoch_at(step), 4),
            "loss": mean_loss,
            "lr": result.schedule["lr"],
            "wd": result.schedule["wd"],
            **result.scalars,
            "grad_norm": float(result.grad_norm) if result.grad_norm is not None else None,
            "images_per_s": self._window_steps * self.batch_size / elapsed,
            "time_s": round(now - self._t_start, 3),
        }
        if self.peak_flops:
            row["mfu"] = self._window_flops / elapsed / self.peak_flops
        if device.type == "cuda":
            row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.reset_peak_memory_stats(device)
        if not math.isfinite(mean_loss):
            raise CxrjepaError(
                f"The loss became {mean_loss} at step {step}; lower optim.lr (or check the data) and rerun "
                "to resume from the last checkpoint."
            )
        for hook in self.hooks:
            if hook.due(step):
                hook(step, row)
        row = {k: v for k, v in row.items() if v is not None}
        self.write(row)
        if self.info.is_main:
            if self._task is not None:
                self._task.update(status=f"loss {mean_loss:.4f}  {row['images_per_s']:.0f} img/s")
            if not console.progress_enabled():
                console.info(format_row(row, self.last_step))
        self.last_row = row
        self._window_loss.zero_()
        self._window_steps, self._window_flops = 0, 0.0
        self.restart_clock()
        return row

    def write(self, row: dict) -> None:
        """Hand a finished row to the sinks (rank 0 only)."""
        if self.info.is_main:
            for sink in self.sinks:
                sink.write(row)

    # ------------------------------------------------------------------ time and progress
    def restart_clock(self) -> None:
        """Start timing throughput anew (after a row, a checkpoint: their time is not training time)."""
        self._t0 = time.perf_counter()

    @contextlib.contextmanager
    def progress(self, start: int) -> Iterator[None]:
        """The progress bar of the loop (rank 0), from ``start``; the clocks start here."""
        with console.progress("pretrain", total=self.last_step, enabled=self.info.is_main) as task:
            self._task = task
            task.update(completed=start)
            self._t0 = self._t_start = time.perf_counter()
            try:
                yield
            finally:
                self._task = None

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
