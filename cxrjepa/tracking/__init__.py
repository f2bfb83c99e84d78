"""Experiment trackers: ``--logger csv,tensorboard,mlflow,wandb`` for pretrain and probe (docs/tracking.md).

One module per tracker (:mod:`.tensorboard`, :mod:`.mlflow`, :mod:`.wandb`), registered by name
(:mod:`.registry`); :class:`TrackerSet` opens the ones asked for, fences off their errors and continues
their runs on resume (:mod:`.session`). The stage's own files stay the source of truth: ``csv`` names them
and is always on. Metric names are the same in every tracker: ``pretrain/<column of metrics.jsonl>`` and
``probe/<task>/<probe>/<metric>`` (:mod:`.base`). Only rank 0 of a training run opens trackers.
"""

from cxrjepa.tracking import mlflow, tensorboard, wandb  # noqa: F401  (they register themselves)
from cxrjepa.tracking.base import FAILED, FINISHED, KILLED, RunInfo, Tracker, TrackerMissing, metric_name, row_metrics
from cxrjepa.tracking.registry import CSV, list_trackers, parse_loggers, register_tracker, tracker_class
from cxrjepa.tracking.session import STATE_FILE, TrackerSet, read_state

__all__ = [
    "CSV",
    "FAILED",
    "FINISHED",
    "KILLED",
    "STATE_FILE",
    "RunInfo",
    "Tracker",
    "TrackerMissing",
    "TrackerSet",
    "list_trackers",
    "metric_name",
    "parse_loggers",
    "read_state",
    "register_tracker",
    "row_metrics",
    "tracker_class",
]
