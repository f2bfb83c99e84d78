"""A probe artifact's files and their schemas (docs/artifacts.md, kind ``probe``; metrics.json: docs/probe.md).

The probe stage writes with these names and checks what it writes against these dataclasses; the report
reads through :class:`Probe`, which checks the manifest's ``contents`` and ``metrics.json`` and reads the
predictions, the split and the segmentation outputs in bounded pieces. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from cxrjepa.core.artifact import STAGE_FOR_KIND, Artifact, open_artifact
from cxrjepa.core.errors import ArtifactError
from cxrjepa.core.schema import SchemaError, parse

KIND = "probe"
METRICS_JSON = "metrics.json"
METRICS_YAML = "metrics.yaml"  # the same data as metrics.json, for people
PREDICTIONS = "predictions.parquet"
SPLIT = "split.csv"
SEGMENTATION_TABLE = "segmentation.parquet"
SEGMENTATION_MASKS = "segmentation.zarr"  # zarr group: one (n_test, S, S) uint8 array per head; attrs sample_id
SIDES = ("train", "val", "test")
#: split.csv columns
SPLIT_COLUMNS = ("sample_id", "patient_key", "split")
#: predictions.parquet columns every row has (classification adds score_<class>; regression target_value,
#: prediction_value)
PREDICTION_COLUMNS = ("sample_id", "task", "probe", "split", "target", "prediction")
#: segmentation.parquet columns (one row per test image, head and class)
SEGMENTATION_COLUMNS = (
    "sample_id",
    "patient_key",
    "split",
    "head",
    "class",
    "dice",
    "iou",
    "true_pixels",
    "pred_pixels",
    "intersection",
    "prediction_index",
)

TaskType = Literal["binary", "multiclass", "multilabel", "regression", "segmentation"]

# ---------------------------------------------------------------- metrics.json


@dataclass
class Metric:
    """A test metric: its value (``None`` when undefined) and the bootstrap 95 % interval (``None``: not estimable)."""

    value: float | None
    ci: list[float | None] | None = None


@dataclass
class FewshotMetric:
    """A few-shot metric: mean and standard deviation over seeds."""

    mean: float | None = None
    std: float | None = None


@dataclass
class RocCurve:
    fpr: list[float]
    tpr: list[float]


@dataclass
class Confusion:
    labels: list[str]
    matrix: list[list[float]]


@dataclass
class Curves:
    roc: dict[str, RocCurve] = field(default_factory=dict)
    confusion: Confusion | None = None


@dataclass
class ProbeResult:
    """One probe (``linear``, ``knn``; segmentation: ``linear``, ``conv``) of a task, scored on test."""

    metrics: dict[str, Metric]
    params: dict[str, Any] = field(default_factory=dict)
    per_class: dict[str, dict[str, Metric]] = field(default_factory=dict)
    curves: Curves = field(default_factory=Curves)


@dataclass
class FewshotPoint:
    fraction: float
    metrics: dict[str, FewshotMetric]
    n_train: int | None = None
    seeds: int | None = None


@dataclass
class Group:
    """A subgroup's test size and metrics (no metrics under ``min_group`` samples or with a single class)."""

    n: int
    metrics: dict[str, Metric] | None = None


@dataclass
class Gap:
    metric: str
    value: float | None
    between: list[str]


@dataclass
class Subgroup:
    groups: dict[str, Group]
    gap: Gap | None = None
    flagged: bool = False


@dataclass
class Severity:
    severity: int
    metrics: dict[str, Metric]


@dataclass(kw_only=True)
class TaskResult:
    """One task of ``tasks`` (a label column), or the ``segmentation`` part (:class:`SegmentationResult`)."""

    type: TaskType
    n: dict[str, int]
    probes: dict[str, ProbeResult]
    classes: list[str] = field(default_factory=list)
    positive: str | None = None
    fewshot: dict[str, list[FewshotPoint]] = field(default_factory=dict)
    subgroups: dict[str, Subgroup] = field(default_factory=dict)
    #: ``clean`` -> metrics, and per corruption a list of severities
    robustness: dict[str, dict[str, Metric] | list[Severity]] = field(default_factory=dict)

    @property
    def clean(self) -> dict[str, Metric]:
        clean = self.robustness.get("clean")
        return clean if isinstance(clean, dict) else {}

    @property
    def corruptions(self) -> dict[str, list[Severity]]:
        return {k: v for k, v in self.robustness.items() if k != "clean" and isinstance(v, list)}


@dataclass(kw_only=True)
class SegmentationResult(TaskResult):
    """metrics.json ``segmentation``: dense probes against the dataset's masks (docs/segmentation.md)."""

    per_image: str
    predictions: str
    values: list[int] = field(default_factory=list)
    features: str | None = None
    grid: list[int] = field(default_factory=list)
    image_size: int | None = None
    loss: str | None = None


@dataclass
class AttributeResult:
    """How well the embeddings predict a patient attribute (``sex``, ``age``)."""

    metrics: dict[str, Metric]
    type: str | None = None
    n: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    positive: str | None = None


@dataclass
class EncoderRef:
    path: str | None = None
    fingerprint: str | None = None


@dataclass
class EmbeddingsRef:
    path: str | None = None
    fingerprint: str | None = None
    features: str | None = None


@dataclass
class ProbeMetrics:
    """metrics.json of a probe artifact."""

    tasks: dict[str, TaskResult]
    encoder: EncoderRef | None = None
    embeddings: EmbeddingsRef | None = None
    bootstrap: dict[str, Any] | None = None
    attributes: dict[str, AttributeResult] = field(default_factory=dict)
    segmentation: SegmentationResult | None = None

    def task_entries(self) -> dict[str, TaskResult]:
        """The tasks, with the segmentation part (shaped like a task) as the task ``segmentation``."""
        out: dict[str, TaskResult] = dict(self.tasks)
        if self.segmentation is not None:
            out.setdefault("segmentation", self.segmentation)
        return out


# ---------------------------------------------------------------- manifest


@dataclass
class SplitInfo:
    path: str
    source: str | None = None  # new | file
    counts: dict[str, int] = field(default_factory=dict)
    patients: dict[str, int] = field(default_factory=dict)
    reused_samples: int | None = None
    new_samples: int | None = None


@dataclass
class SegmentationFiles:
    per_image: str
    predictions: str
    classes: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)


@dataclass
class ProbeContents:
    """The probe manifest's ``contents``."""

    metrics: str
    predictions: str
    split: SplitInfo
    tasks: dict[str, str]
    metrics_yaml: str | None = None
    features: str | None = None
    labels_join: dict[str, Any] | None = None
    segmentation: SegmentationFiles | None = None


# ---------------------------------------------------------------- reading


class Probe:
    """A complete probe artifact: its checked ``contents``, its metrics.json, and bounded reads of its tables."""

    def __init__(self, artifact: Artifact):
        if artifact.kind != KIND:
            raise ArtifactError(f"'{artifact.path}' is a {artifact.kind} artifact, not a probe.")
        self.artifact = artifact
        self.path = artifact.path
        self.contents: ProbeContents = artifact.contents_as(ProbeContents)

    @classmethod
    def open(cls, path: str | Path) -> Probe:
        return cls(open_artifact(path, KIND))

    def _missing(self, name: str) -> SchemaError:
        """A file the manifest names is missing or unreadable: the artifact does not hold what it says."""
        return SchemaError(
            f"The probe '{self.path}' has no readable {name}; rerun '{STAGE_FOR_KIND[KIND]}' with --force."
        )

    @cached_property
    def metrics(self) -> ProbeMetrics:
        """metrics.json, checked against :class:`ProbeMetrics`."""
        path = self.path / self.contents.metrics
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise self._missing(self.contents.metrics) from None
        return parse(
            ProbeMetrics, data, what=f"the probe '{self.path}' ({self.contents.metrics})", rerun=STAGE_FOR_KIND[KIND]
        )

    def split(self):
        """split.csv (sample_id, patient_key, split) as text, or ``None`` when it is missing."""
        import pandas as pd

        path = self.path / self.contents.split.path
        if not path.is_file():
            return None
        try:
            return pd.read_csv(path, usecols=lambda c: c in SPLIT_COLUMNS, dtype=str)
        except (ValueError, pd.errors.ParserError):
            raise self._missing(self.contents.split.path) from None

    def predictions(self, task: str, probe: str, split: str = "test"):
        """Predictions of one task and probe on one split (only those rows are read), or ``None``."""
        import pyarrow.parquet as pq

        path = self.path / self.contents.predictions
        if not path.is_file():
            return None
        try:
            table = pq.read_table(path, filters=[("task", "=", task), ("probe", "=", probe), ("split", "=", split)])
        except (OSError, ValueError, KeyError):
            raise self._missing(self.contents.predictions) from None
        return table.to_pandas()

    def segmentation_table(self, columns: tuple[str, ...] = ("sample_id", "head", "class", "dice", "iou")):
        """The per-image table of the segmentation probe, or ``None`` without one."""
        import pandas as pd

        seg = self.contents.segmentation
        if seg is None:
            return None
        try:
            return pd.read_parquet(self.path / seg.per_image, columns=list(columns))
        except (OSError, ValueError, KeyError):
            raise self._missing(seg.per_image) from None

    def segmentation_masks(self):
        """``(sample ids, zarr group)`` of the predicted test masks (read lazily), or ``None`` without them."""
        import zarr

        seg = self.contents.segmentation
        if seg is None:
            return None
        try:
            group = zarr.open_group(str(self.path / seg.predictions), mode="r")
        except Exception:  # zarr raises several kinds for a missing or broken store
            raise self._missing(seg.predictions) from None
        return [str(s) for s in group.attrs.get("sample_id", [])], group
