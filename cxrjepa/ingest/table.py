"""The metadata table's columns (docs/artifacts.md, kind ``dataset``) and one ingested sample.

Every reader fills a row with :func:`new_row` and overwrites what it knows; unknown values stay empty/NaN.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NAN = math.nan

#: column -> default (its type gives the column's dtype)
COLUMNS: dict[str, Any] = {
    "sample_id": "",
    "patient_key": "",
    "study_key": "",
    "frame_start": 0,
    "frame_count": 0,
    "fps": NAN,
    "source_path": "",
    "source_index": 0,
    "format": "",
    "modality": "",
    "view": "",
    "body_part": "",
    "manufacturer": "",
    "sex": "",
    "age": NAN,
    "rows": 0,
    "cols": 0,
    "frames": 0,
    "pixel_spacing_y": NAN,
    "pixel_spacing_x": NAN,
    "spacing_source": "",
    "photometric": "",
    "transfer_syntax": "",
    "bits_stored": 0,
    "signed": False,
    "voi": "none",
    "window_center": NAN,
    "window_width": NAN,
    "inverted": False,
    "intensity_lo": NAN,
    "intensity_hi": NAN,
    "region_source": "none",
    "crop_y0": 0,
    "crop_x0": 0,
    "crop_y1": 0,
    "crop_x1": 0,
    "scale": NAN,
    "pad_y": 0,
    "pad_x": 0,
    "burned_in_annotation": False,
    "for_processing": False,
    "pixel_hash": "",
    "has_mask": False,
}

#: per-sample values the writer needs but the table does not keep
PRIVATE = ("_dedupe_key", "_sum", "_sumsq", "_npix", "_mask_hash", "_mask_names", "_mask_values")


def new_row(**values: Any) -> dict[str, Any]:
    row = dict(COLUMNS)
    for k, v in values.items():
        if k not in COLUMNS and k not in PRIVATE:
            raise KeyError(f"unknown metadata column {k!r}")
        row[k] = v
    return row


def pixel_hash(frames: np.ndarray) -> str:
    """Hash of the stored pixels (shape and dtype included): equal hashes = identical stored samples."""
    h = hashlib.sha256()
    h.update(f"{frames.dtype.str}{frames.shape}".encode())
    h.update(np.ascontiguousarray(frames).data)
    return h.hexdigest()[:16]


@dataclass
class Sample:
    """An ingested input: its stored frames (T, size, size) and its metadata row."""

    frames: np.ndarray
    row: dict[str, Any] = field(default_factory=dict)
    #: (T, size, size) uint8 label map with the frames' geometry, when a mask was paired (``--masks``)
    mask: np.ndarray | None = None

    def finish(self) -> Sample:
        """Fill the columns computed from the stored frames (count, hash, intensity sums)."""
        f = self.frames
        maxv = float(np.iinfo(f.dtype).max)
        self.row["frame_count"] = int(f.shape[0])
        self.row["pixel_hash"] = pixel_hash(f)
        x = f.astype(np.float64) / maxv
        self.row["_sum"] = float(x.sum())
        self.row["_sumsq"] = float(np.square(x).sum())
        self.row["_npix"] = int(x.size)
        return self
