"""What every experiment tracker implements, what it is told about the run, and the metric names they share.

A tracker (:class:`Tracker`) mirrors what a stage writes to its own files -- metrics.jsonl for pretrain,
metrics.json for probe, which stay the source of truth -- into an outside tool (TensorBoard, MLflow, W&B).
It never decides anything about the run: :class:`cxrjepa.tracking.session.TrackerSet` calls it, fences off
its errors and remembers, in the artifact's ``trackers.json``, which tracker run to continue on resume.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

#: how a tracker run ends: the stage finished, failed, or was stopped (signal, Ctrl-C)
FINISHED, FAILED, KILLED = "finished", "failed", "killed"
_SEGMENT = re.compile(r"[^\w.\- ]")
_CREDENTIALS = re.compile(r"(//)[^/@\s]+@")


class TrackerMissing(Exception):
    """The tracker's package is not installed."""


@dataclass
class RunInfo:
    """What the trackers are told about the stage run they mirror."""

    #: the stage (``pretrain``, ``probe``): the first part of every metric name
    stage: str
    #: the artifact folder (trackers that write files put them here: ``tensorboard/``, ``wandb/``)
    folder: Path
    #: the resolved config (nested); MLflow logs it flattened (:func:`flat_params`), W&B as its config
    config: dict = field(default_factory=dict)
    #: fingerprints and paths (``cxrjepa.fingerprint``, ``cxrjepa.dataset_fingerprint``...)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The tracker run's display name: the artifact folder's name."""
        return self.folder.name

    @property
    def all_tags(self) -> dict[str, str]:
        """``cxrjepa.stage`` and :attr:`tags`."""
        return {"cxrjepa.stage": self.stage, **self.tags}


class Tracker:
    """One experiment tracker (subclasses register with :func:`cxrjepa.tracking.registry.register_tracker`).

    Its package is imported in :meth:`open` only, so a missing package costs nothing until the tracker is
    asked for. Every method may raise; the tracker set turns that into one warning and switches it off.
    """

    #: the name ``--logger`` takes
    name: ClassVar[str] = ""
    #: how messages call it
    label: ClassVar[str] = ""
    #: what to install when it is missing
    install: ClassVar[str] = ""

    def __init__(self, info: RunInfo):
        self.info = info

    @classmethod
    def where(cls, folder: Path) -> str:
        """Where the tracker would log the artifact ``folder`` (for dry runs and messages)."""
        raise NotImplementedError

    def open(self, previous: Mapping[str, Any] | None) -> tuple[dict, bool]:
        """Start a tracker run, or continue ``previous`` (what an earlier open returned, from trackers.json).
        Returns what to remember for a resume and whether ``previous`` was continued. Raises
        :class:`TrackerMissing` when the package is not installed."""
        raise NotImplementedError

    def last_step(self) -> int | None:
        """The last step the tracker itself holds metrics for, when it can tell (``None``: unknown)."""
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def log_files(self, files: Mapping[str, Path]) -> None:
        """Attach the artifact's files (``name -> file or folder``: the manifest, the exported encoder)."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Add tags known only at the end (the content fingerprint)."""

    def flush(self) -> None:
        """Make logged metrics durable (the training loop has ended)."""

    def close(self, status: str) -> None:
        """End the tracker run as :data:`FINISHED`, :data:`FAILED` or :data:`KILLED`."""


# ---------------------------------------------------------------- names shared by every tracker


def metric_name(*parts: str) -> str:
    """``stage/part/...`` with each part made safe for every tracker (letters, digits, ``_ . - `` and
    spaces; anything else, ``/`` inside a part included, becomes ``_``)."""
    return "/".join(_SEGMENT.sub("_", str(p)) for p in parts)


def row_metrics(stage: str, row: Mapping[str, Any]) -> dict[str, float]:
    """A metrics row (metrics.jsonl) as tracker metrics: ``stage/column`` for every numeric column but ``step``."""
    return {
        metric_name(stage, k): float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def probe_metrics(metrics: Any) -> dict[str, float]:
    """A probe's metrics.json (a :class:`cxrjepa.probe.layout.ProbeMetrics`) as tracker metrics: each test
    metric as ``probe/<task>/<probe>/<metric>`` with its bootstrap interval as ``.../ci_low`` and
    ``.../ci_high`` (when estimated), the segmentation probe as the task ``segmentation``, and the
    attribute predictions as ``probe/attributes/<attribute>/<metric>``."""
    out: dict[str, float] = {}

    def add(parts: tuple[str, ...], metric: Any) -> None:
        if metric.value is not None:
            out[metric_name(*parts)] = float(metric.value)
        for bound, value in zip(("ci_low", "ci_high"), metric.ci or ()):
            if value is not None:
                out[metric_name(*parts, bound)] = float(value)

    for task, entry in metrics.task_entries().items():
        for probe, result in entry.probes.items():
            for name, metric in result.metrics.items():
                add(("probe", task, probe, name), metric)
    for attribute, result in metrics.attributes.items():
        for name, metric in result.metrics.items():
            add(("probe", "attributes", attribute, name), metric)
    return out


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as ``dotted.key -> text`` (lists and empty mappings as JSON, ``None`` as ``null``):
    MLflow's params."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, name))
        elif isinstance(value, str):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def redact(uri: str) -> str:
    """``uri`` without the ``user:password@`` part, for messages and trackers.json."""
    return _CREDENTIALS.sub(r"\1***@", uri)


def input_tags(inputs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``cxrjepa.input.<name> -> fingerprint`` of a stage's input references (the manifest's ``inputs``)."""
    return {f"cxrjepa.input.{ref.get('name')}": str(ref.get("fingerprint")) for ref in inputs if ref.get("name")}


def describe_error(exc: BaseException) -> str:
    """``Type: first line`` of an exception (credentials in URIs removed), for a one-line warning."""
    text = str(exc).strip().splitlines()
    first = redact(text[0])[:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
