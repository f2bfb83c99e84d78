"""Volumes (NIfTI, MHA/MHD, NRRD through SimpleITK) -> one sample whose frames are slices.

A 3-D volume is reoriented to LPS, so its frames are axial slices in the radiological display convention
(patient left on the image's right, anterior up) for axial acquisitions; at most ``max_slices`` slices are
kept, evenly spaced from the first to the last. The intensity range is computed over the kept slices
together, so slices stay comparable. In-plane spacing comes from the header; slices are not resampled.
2-D files become a one-frame sample; 4-D files and vectors other than RGB(A) are rejected.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cxrjepa.ingest import ledger
from cxrjepa.ingest.clips import even_indices
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.discover import utf8_name
from cxrjepa.ingest.ledger import Reject
from cxrjepa.ingest.normalize import ConstantImage, store_frames
from cxrjepa.ingest.pixel_claims import check_size
from cxrjepa.ingest.table import Sample, new_row


def _grey(arr: np.ndarray, components: int) -> np.ndarray:
    if components == 1:
        return arr.astype(np.float32)
    if components in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    raise Reject(ledger.UNSUPPORTED_SHAPE, f"{components}-component voxels")


def process_volume(path: Path, item: InputItem, ctx: Context) -> Sample:
    import SimpleITK as sitk

    cfg = ctx.config
    with utf8_name(path) as name:
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(name)
            reader.ReadImageInformation()  # the header only: refuse sizes no image has before reading voxels
            dims = reader.GetSize()  # (x, y, z, ...)
        except Exception as exc:  # SimpleITK's messages quote paths and header text: keep the class only
            raise Reject(ledger.UNREADABLE_VOLUME, type(exc).__name__) from None
        if len(dims) >= 2:
            check_size(int(dims[1]), int(dims[0]), cfg.max_pixels)
        try:
            img = reader.Execute()
        except Exception as exc:
            raise Reject(ledger.UNREADABLE_VOLUME, type(exc).__name__) from None
    dim, comps = img.GetDimension(), img.GetNumberOfComponentsPerPixel()
    if dim not in (2, 3):
        raise Reject(ledger.UNSUPPORTED_SHAPE, f"{dim}-D volume")
    if dim == 3:
        try:
            img = sitk.DICOMOrient(img, "LPS")
        except Exception:
            pass
    arr = sitk.GetArrayViewFromImage(img)
    if dim == 2:
        arr = arr[None]
    n = int(arr.shape[0])
    picks = even_indices(n, cfg.max_slices)
    frames = [_grey(np.asarray(arr[i]), comps) for i in picks]
    if min(frames[0].shape) < 2:
        raise Reject(ledger.UNSUPPORTED_SHAPE, "fewer than 2 rows or columns")
    try:
        stored = store_frames(frames, size=cfg.size, dtype=cfg.dtype, low=cfg.percentile_low, high=cfg.percentile_high)
    except ConstantImage:
        raise Reject(ledger.CONSTANT) from None
    spacing = img.GetSpacing()
    h = hashlib.sha256()
    h.update(repr((arr.shape, str(arr.dtype), tuple(round(s, 6) for s in spacing))).encode())
    h.update(np.ascontiguousarray(arr).data)
    digest = h.hexdigest()
    sample_id = ctx.salt.key("volume", digest)
    row = new_row(
        sample_id=sample_id,
        patient_key=ctx.salt.key("patient-file", digest),
        source_path=item.rel,
        source_index=item.source_index,
        format="volume",
        rows=int(frames[0].shape[0]),
        cols=int(frames[0].shape[1]),
        frames=n,
        pixel_spacing_y=float(spacing[1]),
        pixel_spacing_x=float(spacing[0]),
        spacing_source="volume header",
        photometric="RGB" if comps >= 3 else "MONOCHROME2",
        bits_stored=int(arr.dtype.itemsize * 8),
        signed=bool(np.issubdtype(arr.dtype, np.signedinteger)),
        intensity_lo=stored.intensity_lo,
        intensity_hi=stored.intensity_hi,
        _dedupe_key=sample_id,
        **stored.geometry.columns(),
    )
    return Sample(stored.frames, row).finish()
