"""Settings of ``cxrjepa ingest``.

:class:`IngestConfig` holds the science settings (they change the stored pixels or table, so they enter the
artifact's fingerprint); :class:`IngestOptions` the operational ones (workers, salt location), which do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cxrjepa.core.errors import ConfigError

LABEL_KEYS = ("path", "filename", "sop_uid", "study_uid")


@dataclass
class IngestConfig:
    """How inputs become stored frames (see docs/ingest.md)."""

    #: side of the stored square frames, in pixels
    size: int = 224
    #: storage dtype of the frames
    dtype: Literal["uint8", "uint16"] = "uint8"
    #: keep only these DICOM Modality values (e.g. ["CR", "DX"]); empty keeps every modality.
    #: Non-DICOM inputs have no modality and are skipped when a filter is set.
    modality: list[str] = field(default_factory=list)
    #: ingest FOR PROCESSING radiographs too (they are skipped by default and always flagged)
    allow_for_processing: bool = False
    #: robust intensity range: these percentiles are mapped to 0 and the dtype's maximum
    percentile_low: float = 0.5
    percentile_high: float = 99.5
    #: clips (cines, videos): stored frame rate; 0 keeps the source rate
    clip_fps: float = 15.0
    #: clips: at most this many consecutive frames per sample (at ``clip_fps``)
    max_frames: int = 64
    #: volumes (NIfTI/MHA/NRRD) and multi-frame DICOM without timing: at most this many slices, evenly spaced
    max_slices: int = 64
    #: ultrasound: crop to the scan region (DICOM regions, else where frames vary over time)
    us_crop: bool = True
    #: ultrasound clips: blank pixels outside the detected scan region (burned-in text, calipers, labels)
    us_blank_outside: bool = True
    #: drop repeated instances (same SOPInstanceUID or same file) and repeated pixels; first in input order wins
    dedupe: bool = True
    #: inputs whose frames claim more pixels (rows x columns) than this are rejected before decoding: no
    #: radiograph has them, and a forged header claiming them is a memory bomb (0: no limit)
    max_pixels: int = 8192 * 8192
    #: labels CSV: how rows find their sample
    labels_key: Literal["path", "filename", "sop_uid", "study_uid"] = "path"
    #: labels CSV: the column holding the key (empty: a column named like the key, else 'file'/'path', else the first)
    labels_column: str = ""
    #: labels CSV: column with patient identifiers, hashed into patient_key and never stored raw
    #: ('auto': a column named patient_id / patientid / patient; 'none': do not use one)
    labels_patient_column: str = "auto"
    #: labels CSV: a column of mask file paths (relative to the CSV's folder, '|' between several), paired
    #: with the rows' inputs like --masks (empty: none)
    labels_mask_column: str = ""
    #: masks: names of the label values 1, 2, ... of unnamed masks (--masks DIR); empty: 'foreground' for
    #: binary masks, the value itself for label maps (NAME=DIR masks and DICOM SEG files name their own)
    mask_classes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not 8 <= self.size <= 4096:
            raise ConfigError(f"'size' must be between 8 and 4096 pixels, not {self.size}.")
        if self.dtype not in ("uint8", "uint16"):
            raise ConfigError(f"'dtype' must be uint8 or uint16, not '{self.dtype}'.")
        if not 0.0 <= self.percentile_low < self.percentile_high <= 100.0:
            raise ConfigError("'percentile_low' must be below 'percentile_high', both within 0..100.")
        if self.clip_fps < 0:
            raise ConfigError(f"'clip_fps' must be 0 (source rate) or positive, not {self.clip_fps}.")
        if self.max_frames < 1 or self.max_slices < 1:
            raise ConfigError("'max_frames' and 'max_slices' must be at least 1.")
        if self.max_pixels < 0:
            raise ConfigError(f"'max_pixels' must be 0 (no limit) or positive, not {self.max_pixels}.")
        if self.labels_key not in LABEL_KEYS:
            raise ConfigError(f"'labels_key' must be one of {', '.join(LABEL_KEYS)}, not '{self.labels_key}'.")
        self.modality = [m.strip().upper() for m in self.modality if m and m.strip()]


@dataclass
class IngestOptions:
    """Operational settings: they do not change the result, so they stay out of the fingerprint."""

    #: worker processes (0 or less: one per CPU core)
    workers: int = 0
    #: inputs per work unit (0: chosen from the input count); a unit is the resume granularity
    unit_size: int = 0
    #: file holding the salt for sample/patient hashes (else $CXRJEPA_SALT, else a generated one)
    salt_file: Path | None = None
    #: seconds one input may take in its decode worker; past it the worker is killed and the input ledgered
    time_limit: float = 300.0
    #: MB of memory each decode worker may allocate beyond its own libraries (0: 80 % of the machine's memory
    #: over the workers, within 1024-4096); past it the input is ledgered
    memory_limit_mb: int = 0
