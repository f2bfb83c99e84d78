"""PNG / JPEG / BMP / TIFF images (OpenCV): 8- or 16-bit, grey or colour (to grey), EXIF orientation applied.

The size a file's header claims is checked against ``max_pixels`` before anything is decoded."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import cv2
import numpy as np

from cxrjepa.ingest import ledger
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.ledger import Reject
from cxrjepa.ingest.normalize import ConstantImage, store_frames
from cxrjepa.ingest.pixel_claims import check_size
from cxrjepa.ingest.table import Sample, new_row


def bgr_to_grey(img: np.ndarray) -> np.ndarray:
    """OpenCV's BGR / BGRA / grey frame -> float32 grey (BT.601 luma)."""
    if img.ndim == 2:
        return img.astype(np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        return img[..., 0].astype(np.float32)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return cv2.cvtColor(np.ascontiguousarray(img[..., :3], dtype=np.float32), cv2.COLOR_BGR2GRAY)
    raise Reject(ledger.UNSUPPORTED_SHAPE, f"{img.ndim}-D image with {img.shape[-1]} channels")


def claimed_size(data: bytes) -> tuple[int, int] | None:
    """(rows, columns) that an image file's header claims, read by Pillow without decoding; None when
    Pillow cannot tell (OpenCV then decides)."""
    import warnings

    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # only the header is read here: max_pixels is the limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        return int(height), int(width)
    except Exception:
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = old


def process_image(path: Path, item: InputItem, ctx: Context) -> Sample:
    cfg = ctx.config
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Reject(ledger.UNREADABLE_FILE, type(exc).__name__) from None
    size = claimed_size(data)
    if size is not None:
        check_size(*size, cfg.max_pixels)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise Reject(ledger.UNREADABLE_IMAGE)
    colour = img.ndim == 3 and img.shape[2] >= 3
    grey = bgr_to_grey(img)
    if min(grey.shape) < 2:
        raise Reject(ledger.UNSUPPORTED_SHAPE, "fewer than 2 rows or columns")
    try:
        stored = store_frames([grey], size=cfg.size, dtype=cfg.dtype, low=cfg.percentile_low, high=cfg.percentile_high)
    except ConstantImage:
        raise Reject(ledger.CONSTANT) from None
    digest = hashlib.sha256(data).hexdigest()
    sample_id = ctx.salt.key("file", digest)
    row = new_row(
        sample_id=sample_id,
        patient_key=ctx.salt.key("patient-file", digest),
        source_path=item.rel,
        source_index=item.source_index,
        format="image",
        rows=int(grey.shape[0]),
        cols=int(grey.shape[1]),
        frames=1,
        photometric="RGB" if colour else "MONOCHROME2",
        bits_stored=int(img.dtype.itemsize * 8),
        signed=bool(np.issubdtype(img.dtype, np.signedinteger)),
        intensity_lo=stored.intensity_lo,
        intensity_hi=stored.intensity_hi,
        _dedupe_key=sample_id,
        **stored.geometry.columns(),
    )
    return Sample(stored.frames, row).finish()
