"""Trackers by name, as ``--logger`` takes them (a registry in the manner of timm's model registry).

``csv`` is accepted too: it names the files every stage always writes (pretrain's metrics.jsonl and
metrics.csv, probe's metrics.json and metrics.yaml), so it needs no tracker.
"""

from __future__ import annotations

from collections.abc import Iterable

from cxrjepa.core.errors import UsageError
from cxrjepa.tracking.base import Tracker

#: the always-written files
CSV = "csv"
_TRACKERS: dict[str, type[Tracker]] = {}


def register_tracker(cls: type[Tracker]) -> type[Tracker]:
    """Class decorator: make ``cls`` available to ``--logger`` under ``cls.name``."""
    _TRACKERS[cls.name] = cls
    return cls


def list_trackers() -> list[str]:
    """Every name ``--logger`` accepts, ``csv`` first."""
    return [CSV, *_TRACKERS]


def tracker_class(name: str) -> type[Tracker]:
    try:
        return _TRACKERS[name]
    except KeyError:
        raise UsageError(f"Unknown logger '{name}'; choose from {', '.join(list_trackers())}.") from None


def parse_loggers(values: Iterable[str] | str | None, *, tensorboard: bool = False) -> list[str]:
    """The trackers to open for ``--logger`` values (repeatable, comma-separated; ``csv`` is always on and
    left out), in order, each once; ``tensorboard=True`` (the ``--tensorboard`` flag) adds TensorBoard."""
    if isinstance(values, str):
        values = [values]
    names = [v.strip().lower() for item in values or () for v in str(item).split(",") if v.strip()]
    if tensorboard:
        names.append("tensorboard")
    out: list[str] = []
    for name in names:
        if name != CSV:
            tracker_class(name)
        if name != CSV and name not in out:
            out.append(name)
    return out
