"""A run artifact's files and the schema of its manifest (docs/artifacts.md, kind ``run``). Torch-free.

The pretrain stage writes its manifest with these names and checks it against :class:`RunContents` and
:class:`RunCounts`; the planner (``cxrjepa.pretrain.api.plan_pretrain``) and the report read a run through
:class:`Run`: its checked manifest, the exported encoder's files (paths from ``contents.encoder``), and the
metrics log thinned to a bounded number of rows (:func:`read_metrics`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrjepa.core.artifact import Artifact, open_artifact
from cxrjepa.core.errors import ArtifactError

KIND = "run"
CONFIG_FILE = "config.yaml"  # the resolved config

# ---------------------------------------------------------------- manifest


@dataclass
class EncoderExport:
    """``contents.encoder``: the exported encoder (paths relative to the run) and what it expects."""

    weights: str
    config: str
    timm_model: str | None = None
    embed_dim: int | None = None
    image_size: int | None = None
    patch_size: int | None = None
    weights_sha256: str | None = None
    normalization: dict[str, float] | None = None


@dataclass
class RunContents:
    """The run manifest's ``contents`` (objectives may add entries, e.g. SALT's ``teacher``)."""

    objective: str
    config: str
    metrics: list[str]
    encoder: EncoderExport
    stopped_early: bool
    checkpoints: list[str] = field(default_factory=list)
    final: dict[str, float | None] = field(default_factory=dict)
    world_size: int | None = None
    strategy: str | None = None
    selection: dict[str, Any] | None = None
    init: dict[str, Any] | None = None
    clips: dict[str, Any] | None = None
    tensorboard: str | None = None
    teacher: dict[str, Any] | None = None
    teacher_cache: str | None = None


@dataclass
class RunCounts:
    """The run manifest's ``counts``."""

    steps: int
    planned_steps: int
    images_seen: int | None = None
    epochs: float | None = None
    frames: int | None = None
    collapse_warnings: int = 0


# ---------------------------------------------------------------- metrics log


@dataclass
class RunMetrics:
    """A run's logged metrics: ``frame`` (numeric, sorted by step, thinned), lines in the log, and how many
    NaN or infinite values each metric had over the whole log."""

    frame: Any  # pandas.DataFrame
    lines: int
    nonfinite: dict[str, int]


def read_metrics(files: Sequence[str | Path], max_points: int = 2000) -> RunMetrics | None:
    """The first readable log of ``files`` (metrics.jsonl, else metrics.csv) thinned to about ``max_points``
    logged steps (first and last kept); NaN/inf values are counted over every line. ``None`` without a log."""
    for f in map(Path, files):
        if f.is_file():
            got = _read_jsonl(f, max_points) if f.suffix == ".jsonl" else _read_csv(f, max_points)
            if got is not None:
                return got
    return None


def _read_jsonl(path: Path, max_points: int) -> RunMetrics | None:
    import pandas as pd

    n = 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
    stride = max(1, math.ceil(n / max_points))
    rows, last, nonfinite = [], None, Counter()
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or "step" not in rec:
                continue
            for k, v in rec.items():
                if isinstance(v, float) and not math.isfinite(v):
                    nonfinite[k] += 1
            if i % stride == 0:
                rows.append(rec)
                last = None
            else:
                last = rec
    if last is not None:
        rows.append(last)
    if not rows:
        return None
    return RunMetrics(_numeric_frame(pd.DataFrame(rows)), n, dict(nonfinite))


def _read_csv(path: Path, max_points: int) -> RunMetrics | None:
    import numpy as np
    import pandas as pd

    df = pd.read_csv(path)
    if "step" not in df:
        return None
    nonfinite = {c: int((~np.isfinite(pd.to_numeric(df[c], errors="coerce"))).sum()) for c in df.columns}
    stride = max(1, math.ceil(len(df) / max_points))
    thin = pd.concat([df.iloc[::stride], df.iloc[[-1]]]).drop_duplicates()
    return RunMetrics(_numeric_frame(thin), len(df), {k: v for k, v in nonfinite.items() if v})


def _numeric_frame(df):
    import pandas as pd

    for c in df.columns:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.sort_values("step").reset_index(drop=True)


# ---------------------------------------------------------------- reading


class Run:
    """A run artifact read through its checked manifest (complete, or a manifest handed over by a planner)."""

    def __init__(self, artifact: Artifact):
        if artifact.kind != KIND:
            raise ArtifactError(f"'{artifact.path}' is a {artifact.kind} artifact, not a run.")
        self.artifact = artifact
        self.path = artifact.path
        self.contents: RunContents = artifact.contents_as(RunContents)
        self.counts: RunCounts = artifact.counts_as(RunCounts)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        return cls(open_artifact(path, KIND))

    def steps_to_go(self, max_steps: int | None = None) -> int:
        """Steps a rerun would add to a run stopped early by ``--max-steps`` (up to ``max_steps``; 0 otherwise)."""
        if not self.contents.stopped_early:
            return 0
        planned = self.counts.planned_steps
        want = min(planned, max_steps) if max_steps else planned
        return max(0, want - self.counts.steps)

    @property
    def encoder_weights(self) -> Path:
        return self.path / self.contents.encoder.weights

    def encoder_config(self) -> dict | None:
        """The exported encoder's config.json (architecture, sizes, normalization), ``None`` when unreadable."""
        try:
            data = json.loads((self.path / self.contents.encoder.config).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def metrics(self, max_points: int = 2000) -> RunMetrics | None:
        """The run's metrics log (``contents.metrics``: metrics.jsonl, else metrics.csv), thinned."""
        return read_metrics([self.path / m for m in self.contents.metrics], max_points)
