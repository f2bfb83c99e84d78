"""One DICOM file -> one sample (a still image, or a clip of consecutive cine frames), or a ledger reason.

Policy checks run on the header before any pixel is decoded (DICOMDIR, non-image objects, modality filter,
FOR PROCESSING, decoder availability), then the header's pixel description is checked against the pixel
data (pixel_claims.py); only the frames that are kept are decoded. Identifying values are
read only to be hashed with the salt (SOPInstanceUID, StudyInstanceUID, PatientID) or reduced to coarse
values (age in years, sex); nothing else identifying is read at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxrjepa.ingest import ledger
from cxrjepa.ingest.clips import even_indices, rate_indices
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.dicom_pixels import (
    AllPluginsCrashed,
    DecodeError,
    NoDecoder,
    NonFiniteRescale,
    Voi,
    decode_frames,
    lookup,
    lut_dataset,
    plugins_for,
    to_grey,
)
from cxrjepa.ingest.ledger import Reject, skip
from cxrjepa.ingest.normalize import ConstantImage, store_frames
from cxrjepa.ingest.phi import age_years, coded, sex_code, short_text
from cxrjepa.ingest.pixel_claims import check_claims
from cxrjepa.ingest.region import region_from_dicom, region_from_variance, spacing_from_regions
from cxrjepa.ingest.table import Sample, new_row

#: pixel data larger than this stays on disk and is streamed frame by frame
DEFER_SIZE = 8 * 1024 * 1024

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: SOP class name fragments of objects that hold no image to learn from (checked unless "Image Storage")
_NON_IMAGE_NAMES = (
    ("SR Storage", "SR"),
    ("Presentation State", "PR"),
    ("Key Object Selection", "KO"),
    ("RT Structure Set", "RT"),
    ("RT Plan", "RT"),
    ("RT Dose", "RT"),
    ("RT Beams", "RT"),
    ("RT Treatment", "RT"),
    ("RT Ion", "RT"),
    ("Segmentation", "SEG"),
    ("Encapsulated", "DOC"),
    ("Waveform", "WAVEFORM"),
    ("ECG", "WAVEFORM"),
    ("Raw Data", "RAW"),
    ("Spectroscopy", "SPECTROSCOPY"),
    ("Surface", "SURFACE"),
    ("Registration", "REG"),
    ("Fiducials", "FID"),
    ("Measurement", "MEASUREMENT"),
    ("Tractography", "TRACT"),
    ("Annotation", "ANN"),
)
_NON_IMAGE_MODALITIES = {
    "SR": "SR",
    "PR": "PR",
    "KO": "KO",
    "SEG": "SEG",
    "REG": "REG",
    "FID": "FID",
    "DOC": "DOC",
    "RTSTRUCT": "RT",
    "RTPLAN": "RT",
    "RTDOSE": "RT",
    "RTRECORD": "RT",
    "ECG": "WAVEFORM",
    "HD": "WAVEFORM",
}

# pydicom reports odd values through logging and warnings, sometimes quoting them: never let them out.
logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """No pydicom warnings or validation messages (they can quote identifying values)."""
    old = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_config.settings.reading_validation_mode = old


def read_header(path: Path, *, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Read a DICOM file (with or without preamble / file meta); large pixel data stays on disk."""
    try:
        ds = pydicom.dcmread(
            str(path),
            force=True,
            defer_size=None if stop_before_pixels else DEFER_SIZE,
            stop_before_pixels=stop_before_pixels,
        )
    except Exception as exc:
        raise Reject(ledger.UNREADABLE_DICOM, type(exc).__name__) from None
    try:
        if len(ds) == 0 and not getattr(ds, "file_meta", None):
            raise Reject(ledger.UNREADABLE_DICOM, "no elements")
        _ensure_transfer_syntax(ds)
    except Reject:
        raise
    except Exception as exc:
        raise Reject(ledger.UNREADABLE_DICOM, type(exc).__name__) from None
    return ds


def _ensure_transfer_syntax(ds: pydicom.Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if not meta.get("TransferSyntaxUID"):
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit is None:
            implicit, little = True, True
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )


def non_image_kind(ds: pydicom.Dataset) -> str | None:
    """'SR', 'PR', 'KO', 'RT', 'SEG', ... for objects that are not images; None for images."""
    sop = str(ds.get("SOPClassUID") or getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or "")
    name = UID(sop).name if sop else ""
    if name and "Image Storage" not in name:
        for fragment, kind in _NON_IMAGE_NAMES:
            if fragment in name:
                return kind
    return _NON_IMAGE_MODALITIES.get(coded(ds.get("Modality")))


def check_policy(ds: pydicom.Dataset, ctx: Context) -> None:
    """Raise a skip/reject for inputs that must not be decoded (before any pixel work)."""
    sop = str(ds.get("SOPClassUID") or getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or "")
    if sop == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise skip(ledger.DICOMDIR)
    kind = non_image_kind(ds)
    if kind:
        raise skip(ledger.NON_IMAGE, kind)
    modality = coded(ds.get("Modality"))
    if ctx.config.modality and modality not in ctx.config.modality:
        raise skip(ledger.MODALITY, modality or "none")
    if coded(ds.get("PresentationIntentType")) == "FOR PROCESSING" and not ctx.config.allow_for_processing:
        raise skip(ledger.FOR_PROCESSING)


def frame_count(ds: pydicom.Dataset) -> int:
    """NumberOfFrames, or 1 when it is missing or not a positive whole number."""
    text = str(ds.get("NumberOfFrames") or "1").strip()
    return max(1, int(text)) if text.isdigit() else 1


def check_pixels(ds: pydicom.Dataset, path: Path, ctx: Context) -> None:
    """Raise a :class:`Reject` for pixel data that is missing, unsupported, has no decoder on this install,
    is larger than ``max_pixels`` or disagrees with the header (:mod:`cxrjepa.ingest.pixel_claims`)."""
    if 0x7FE00010 not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise Reject(ledger.UNSUPPORTED_PIXELS, "float pixel data")
        raise Reject(ledger.NO_PIXELS)
    raw = ds._dict.get(0x7FE00010)
    if getattr(raw, "length", 1) == 0:
        raise Reject(ledger.NO_PIXELS)
    for kw in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation"):
        if ds.get(kw) in (None, ""):
            raise Reject(ledger.UNSUPPORTED_PIXELS, f"missing {kw}")
    if int(ds.Rows) < 2 or int(ds.Columns) < 2:
        raise Reject(ledger.UNSUPPORTED_SHAPE, "fewer than 2 rows or columns")
    tsyntax = ds.file_meta.TransferSyntaxUID
    try:
        plugins_for(tsyntax)
    except NoDecoder:
        raise Reject(ledger.NO_DECODER, ts_name(tsyntax)) from None
    try:
        check_claims(ds, path, frame_count(ds), ctx.config.max_pixels)
    except Reject:
        raise
    except Exception as exc:  # a value of the wrong type where a number belongs
        raise Reject(ledger.UNSUPPORTED_PIXELS, type(exc).__name__) from None


def check_header(ds: pydicom.Dataset, path: Path, ctx: Context) -> None:
    """:func:`check_policy` then :func:`check_pixels`; an element pydicom cannot convert on the way (a corrupt
    VR or value) makes the file "unreadable DICOM"."""
    try:
        check_policy(ds, ctx)
        check_pixels(ds, path, ctx)
    except Reject:
        raise
    except Exception as exc:
        raise Reject(ledger.UNREADABLE_DICOM, type(exc).__name__) from None


def public_ts(tsyntax: object) -> str:
    """The transfer syntax UID when it is a standard one, else 'private' (a private UID is not copied)."""
    uid = UID(str(tsyntax or "").strip())
    if uid.startswith("1.2.840.10008.1.2") and uid.name != str(uid):
        return str(uid)
    return "private"


def ts_name(tsyntax: object) -> str:
    """A transfer syntax's name for messages and the ledger (a private or unknown UID is not copied)."""
    ts = public_ts(tsyntax)
    return UID(ts).name if ts != "private" else "private or unknown transfer syntax"


def frame_rate(ds: pydicom.Dataset) -> float:
    """Frames per second from FrameTime (ms), FrameTimeVector, CineRate or RecommendedDisplayFrameRate."""
    try:
        ft = float(ds.get("FrameTime") or 0)
        if ft > 0:
            return 1000.0 / ft
        vec = ds.get("FrameTimeVector")
        if vec and len(vec) > 1:
            mean = sum(float(v) for v in list(vec)[1:]) / (len(vec) - 1)
            if mean > 0:
                return 1000.0 / mean
        for kw in ("CineRate", "RecommendedDisplayFrameRate"):
            v = float(ds.get(kw) or 0)
            if v > 0:
                return v
    except (TypeError, ValueError):
        pass
    return math.nan


def _spacing(ds: pydicom.Dataset) -> tuple[float, float, str]:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        value = lookup(ds, kw)
        try:
            if value is not None and len(value) >= 2 and float(value[0]) > 0 and float(value[1]) > 0:
                return float(value[0]), float(value[1]), kw
        except (TypeError, ValueError):
            continue
    us = spacing_from_regions(ds)
    if us:
        return us[0], us[1], "SequenceOfUltrasoundRegions"
    return math.nan, math.nan, ""


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _date(ds: pydicom.Dataset) -> Any:
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        if ds.get(kw):
            return ds.get(kw)
    return None


def process_dicom(path: Path, item: InputItem, ctx: Context) -> Sample:
    cfg = ctx.config
    with quiet_pydicom():
        ds = read_header(path)
        check_header(ds, path, ctx)
        n = frame_count(ds)
        src_fps = frame_rate(ds) if n > 1 else math.nan
        if n == 1:
            indices, fps = [0], math.nan
        elif not math.isnan(src_fps):
            indices, fps = rate_indices(n, src_fps, cfg.clip_fps, cfg.max_frames)
        else:
            indices, fps = even_indices(n, cfg.max_slices), math.nan
        # enhanced objects keep rescale/window in functional groups: resolve them per frame; classic
        # objects have them at the top level, where pydicom's LUT functions look
        per_frame = "PerFrameFunctionalGroupsSequence" in ds
        shared_lds = lut_dataset(ds, 0) if per_frame or "SharedFunctionalGroupsSequence" in ds else ds
        frames, voi = [], None
        try:
            for index, arr, photometric in decode_frames(ds, path, indices):
                lds = lut_dataset(ds, index) if per_frame else shared_lds
                grey, v = to_grey(arr, photometric, lds, ds)
                if grey.shape != (int(ds.Rows), int(ds.Columns)):
                    raise Reject(ledger.PIXELS_MISMATCH, "decoded frame shape differs from Rows x Columns")
                frames.append(grey)
                voi = voi or v
        except (Reject, MemoryError):
            raise
        except AllPluginsCrashed as exc:
            raise Reject(ledger.WORKER_CRASHED, str(exc)) from None
        except NonFiniteRescale:
            raise Reject(ledger.UNSUPPORTED_PIXELS, "RescaleSlope or RescaleIntercept not finite") from None
        except (DecodeError, NoDecoder) as exc:
            raise Reject(ledger.DECODE_FAILED, f"{ts_name(ds.file_meta.TransferSyntaxUID)}: {exc}") from None
        except Exception as exc:
            raise Reject(
                ledger.DECODE_FAILED, f"{ts_name(ds.file_meta.TransferSyntaxUID)}: {type(exc).__name__}"
            ) from None
        shape = frames[0].shape
        modality = coded(ds.get("Modality"))
        is_us = modality in ("US", "IVUS") or "SequenceOfUltrasoundRegions" in ds
        region = None
        if cfg.us_crop and is_us:
            region = region_from_dicom(ds, shape) or region_from_variance(frames, with_fov=cfg.us_blank_outside)
        photometric = str(ds.PhotometricInterpretation).strip().upper()
        invert = photometric == "MONOCHROME1"
        try:
            stored = store_frames(
                frames,
                size=cfg.size,
                dtype=cfg.dtype,
                low=cfg.percentile_low,
                high=cfg.percentile_high,
                invert=invert,
                crop=region.crop if region else None,
                fov=region.fov if region else None,
            )
        except ConstantImage:
            raise Reject(ledger.CONSTANT) from None
        del frames
        sy, sx, ssrc = _spacing(ds)
        sop_uid = str(ds.get("SOPInstanceUID") or "").strip()
        basis = ("sop", sop_uid) if sop_uid else ("file", _file_digest(path))
        sample_id = ctx.salt.key(*basis)
        patient_id = str(ds.get("PatientID") or "").strip()
        study_uid = str(ds.get("StudyInstanceUID") or "").strip()
        voi = voi or Voi()
        row = new_row(
            sample_id=sample_id,
            patient_key=ctx.salt.key("patient", patient_id)
            if patient_id
            else ctx.salt.key("patient-" + basis[0], basis[1]),
            study_key=ctx.salt.key("study", study_uid) if study_uid else "",
            fps=fps,
            source_path=item.rel,
            source_index=item.source_index,
            format="dicom",
            modality=modality,
            view=coded(ds.get("ViewPosition")),
            body_part=coded(ds.get("BodyPartExamined")),
            manufacturer=short_text(ds.get("Manufacturer")),
            sex=sex_code(ds.get("PatientSex")),
            age=age_years(ds.get("PatientAge"), ds.get("PatientBirthDate"), _date(ds)),
            rows=int(ds.Rows),
            cols=int(ds.Columns),
            frames=n,
            pixel_spacing_y=sy,
            pixel_spacing_x=sx,
            spacing_source=ssrc,
            photometric=coded(photometric),
            transfer_syntax=public_ts(ds.file_meta.TransferSyntaxUID),
            bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
            signed=int(ds.get("PixelRepresentation") or 0) == 1,
            voi=voi.kind,
            window_center=voi.center,
            window_width=voi.width,
            inverted=invert,
            intensity_lo=stored.intensity_lo,
            intensity_hi=stored.intensity_hi,
            region_source=region.source if region else "none",
            burned_in_annotation=coded(ds.get("BurnedInAnnotation")) == "YES",
            for_processing=coded(ds.get("PresentationIntentType")) == "FOR PROCESSING",
            _dedupe_key=sample_id,
            **stored.geometry.columns(),
        )
    return Sample(stored.frames, row).finish()
