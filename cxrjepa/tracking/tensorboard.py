"""TensorBoard: event files in ``ARTIFACT/tensorboard/`` (``tensorboard --logdir ARTIFACT/tensorboard``).

A continued run writes a new event file whose first step purges the events at and after it that the
interrupted run left (TensorBoard's ``purge_step``), so a resumed curve has each step once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrjepa.tracking.base import Tracker, TrackerMissing
from cxrjepa.tracking.registry import register_tracker

#: the event files' folder in the artifact
TENSORBOARD_DIR = "tensorboard"


@register_tracker
class TensorBoardTracker(Tracker):
    name = "tensorboard"
    label = "TensorBoard"
    install = "cxrjepa[tensorboard]"

    @classmethod
    def where(cls, folder: Path) -> str:
        return str(Path(folder) / TENSORBOARD_DIR)

    def open(self, previous: Mapping[str, Any] | None) -> tuple[dict, bool]:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackerMissing("tensorboard") from None
        self._writer_class = SummaryWriter
        self._writer = None
        self._continued = previous is not None
        return {"dir": TENSORBOARD_DIR}, self._continued

    def _writer_at(self, step: int):
        if self._writer is None:  # made at the first step written, so a continued run purges from there
            self._writer = self._writer_class(
                str(self.info.folder / TENSORBOARD_DIR), purge_step=step if self._continued else None
            )
        return self._writer

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        writer = self._writer_at(step)
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self, status: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
