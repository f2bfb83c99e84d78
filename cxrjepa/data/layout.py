"""Names inside a dataset artifact and the schema of its manifest (see docs/artifacts.md, kind ``dataset``).

Torch- and zarr-free: :class:`cxrjepa.data.store.DatasetArtifact` and the report read a dataset's manifest
through :class:`DatasetContents` and :class:`DatasetCounts`; the writers (ingest, ``write_dataset``) fill them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ZARR = "data.zarr"  # zarr v3 group
IMAGES = "images"  # array (frames, y, x), one frame per chunk, shards of SHARD_FRAMES frames
MASKS = "masks"  # optional array (frames, y, x) uint8 label maps aligned with images
METADATA = "metadata.parquet"  # one row per sample
FAILURES = "failures.jsonl"  # failure ledger: one JSON object per rejected input
DIMENSION_NAMES = ("frame", "y", "x")
SHARD_FRAMES = 64

#: metadata columns every dataset has (labels joined from a CSV come after these)
INDEX_COLUMNS = ("sample_id", "patient_key", "frame_start", "frame_count")


@dataclass
class ArrayInfo:
    """Where an array of the zarr store is and its geometry."""

    path: str
    shape: list[int]
    dtype: str
    chunks: list[int] = field(default_factory=list)
    shards: list[int] = field(default_factory=list)
    dimension_names: list[str] = field(default_factory=list)


@dataclass
class DatasetContents:
    """The dataset manifest's ``contents``."""

    images: ArrayInfo
    metadata: str
    label_columns: list[str]
    #: ``divide_by``, ``mean``, ``std`` of the stored intensities
    normalization: dict[str, float] | None = None
    failures: str | None = None
    columns: list[str] = field(default_factory=list)
    size: int | None = None
    #: ``False`` without ``--masks``; else the masks array (ArrayInfo's keys plus classes, values, ...)
    masks: bool | dict[str, Any] = False
    salt: dict[str, str] | None = None


@dataclass
class DatasetCounts:
    """The dataset manifest's ``counts`` (ingest adds per-format, per-reason and labels-join counts)."""

    samples: int
    frames: int
    rejected: int
    inputs: int | None = None
    skipped: int = 0
    duplicates: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
