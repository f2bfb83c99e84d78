"""Synthetic DICOM files as real archives hold them, for tests and benchmarks (test-only: not shipped).

:func:`make_dataset` builds a dataset from pixels (mono or RGB, still or multi-frame, any bit depth,
signed or not, rescale / window / VOI LUT tags); :func:`write_dicom` saves it in a transfer syntax this
install can encode (:func:`encodable_syntaxes`), encoded by cxrjepa's one synthetic-DICOM encoder,
:func:`cxrjepa.demo.codecs.encode` (the one demo-data writes with), or as a bare data set without preamble
and file meta.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxrjepa.demo import codecs

SOP_CLASS = {
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "US_MF": "1.2.840.10008.5.1.4.1.1.3.1",
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "OT": SecondaryCaptureImageStorage,
}

#: the lossy syntaxes among :func:`encodable_syntaxes`
LOSSY = tuple(s.uid for s in codecs.SYNTAXES if s.lossy)


def make_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "CR",
    photometric: str | None = None,
    bits_stored: int | None = None,
    signed: bool = False,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    frame_time_ms: float | None = None,
    tags: Mapping[str, Any] | None = None,
    sop_uid: str | None = None,
) -> Dataset:
    """A DICOM dataset holding ``pixels``: (rows, cols) or (frames, rows, cols) grey, or (..., 3) RGB.

    Grey pixels are stored as given (uint8 / uint16 / int16); ``bits_stored`` defaults to the dtype's
    bits. ``voi_lut`` is a VOI LUT Sequence table (first mapped value 0).
    """
    arr = np.asarray(pixels)
    colour = arr.shape[-1] == 3 and arr.ndim in (3, 4) and (arr.ndim == 4 or photometric == "RGB")
    frames = arr.shape[0] if (arr.ndim == 3 and not colour) or arr.ndim == 4 else 1
    rows, cols = (arr.shape[-3], arr.shape[-2]) if colour else (arr.shape[-2], arr.shape[-1])
    ds = Dataset()
    sop_class = (
        SOP_CLASS["US_MF" if modality == "US" and frames > 1 else modality]
        if modality in SOP_CLASS
        else SOP_CLASS["OT"]
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "SYNTH-0001"
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    ds.Rows, ds.Columns = int(rows), int(cols)
    if frames > 1:
        ds.NumberOfFrames = int(frames)
        if frame_time_ms:
            ds.FrameTime = float(frame_time_ms)
            ds.FrameIncrementPointer = 0x00181063
    if colour:
        data = arr.astype(np.uint8)
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
    else:
        if signed:
            data = arr.astype(np.int16)
        elif arr.dtype == np.uint8:
            data = arr
        else:
            data = arr.astype(np.uint16)
        bits_alloc = data.dtype.itemsize * 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric or "MONOCHROME2"
        ds.BitsAllocated = bits_alloc
        ds.BitsStored = int(bits_stored or bits_alloc)
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(signed)
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if voi_lut is not None:
            item = Dataset()
            lut = np.asarray(voi_lut, dtype=np.uint16)
            item.LUTDescriptor = [len(lut), 0, 16]
            item.add_new(0x00283006, "US", lut.tolist())  # LUTData
            ds.VOILUTSequence = [item]
    ds.PixelData = np.ascontiguousarray(data).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    for k, v in (tags or {}).items():
        setattr(ds, k, v)
    return ds


def encodable_syntaxes(*, lossy: bool = True) -> list[UID]:
    """Transfer syntaxes :func:`write_dicom` can produce on this install (every one cxrjepa can encode)."""
    return [s.uid for s in codecs.available_syntaxes(every=True) if lossy or not s.lossy]


def write_dicom(
    ds: Dataset, path: str | Path, transfer_syntax: str = ExplicitVRLittleEndian, *, preamble: bool = True
) -> Path:
    """Save ``ds`` in ``transfer_syntax`` (``preamble=False``: a bare data set, no preamble or file meta).

    A copy is encoded, so ``ds`` can be written again; like ``Dataset.compress``, pydicom's encoders give the
    compressed copy a new SOPInstanceUID."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = UID(transfer_syntax)
    ds = copy.deepcopy(ds)
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    codecs.encode(ds, codecs.BY_UID[ts].key, new_instance_uid=True)
    if not preamble:
        ds.save_as(
            path,
            implicit_vr=ts == ImplicitVRLittleEndian,
            little_endian=ts != ExplicitVRBigEndian,
            enforce_file_format=False,
        )
        _strip_meta(path)
        return path
    ds.save_as(path, enforce_file_format=True)
    return path


def _strip_meta(path: Path) -> None:
    """Rewrite ``path`` as a bare data set (no 128-byte preamble, no group 0002)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = pydicom.dcmread(path, force=True)
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian if "TransferSyntaxUID" in ds.file_meta else True
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = implicit
    del ds.file_meta
    write_dataset(buf, ds)
    path.write_bytes(buf.getvalue())


def phantom(rows: int, cols: int, *, seed: int = 0, bits: int = 12, frames: int = 0) -> np.ndarray:
    """A smooth chest-like test pattern with some noise (values 0 .. 2**bits - 1), uint16."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows / 2, cols / 2
    body = np.exp(-(((yy - cy) / (0.45 * rows)) ** 2 + ((xx - cx) / (0.4 * cols)) ** 2) * 2)
    lungs = sum(
        np.exp(-(((yy - 0.45 * rows) / (0.25 * rows)) ** 2 + ((xx - s * cols) / (0.12 * cols)) ** 2))
        for s in (0.32, 0.68)
    )
    img = 0.15 + 0.7 * body - 0.35 * lungs + 0.05 * np.sin(xx / (3 + seed % 5))
    top = 2**bits - 1

    def one(k: int) -> np.ndarray:
        x = img + rng.normal(0, 0.02, img.shape).astype(np.float32) + 0.03 * np.sin(k / 3.0 + yy / 9.0)
        return np.clip(x * top, 0, top).astype(np.uint16)

    if frames:
        return np.stack([one(k) for k in range(frames)])
    return one(0)
