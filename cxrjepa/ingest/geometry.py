"""Geometry of a stored frame: crop box -> resize keeping aspect -> pad to a centred square.

One function, :func:`apply_geometry`, maps any 2-D array of a source (image frame, mask, label map) into
the stored square with a sample's recorded geometry, so masks get exactly the image's geometry:

    geom = Geometry.from_row(dataset.meta.iloc[i])      # or the dict of one metadata row
    stored_mask = apply_geometry(mask, geom, nearest=True)

Images are resized with area averaging when shrinking and bilinear interpolation when enlarging; masks and
label maps with centre-aligned nearest neighbour. Padding is 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Crop box in source pixels (``y1``/``x1`` exclusive), the scale, the resized shape and its offset."""

    crop_y0: int
    crop_x0: int
    crop_y1: int
    crop_x1: int
    size: int
    scale: float
    out_h: int
    out_w: int
    pad_y: int
    pad_x: int

    @classmethod
    def fit(cls, shape: tuple[int, int], size: int, crop: tuple[int, int, int, int] | None = None) -> Geometry:
        """The geometry that fits ``crop`` (default: the whole ``shape``) into a ``size`` square."""
        h_img, w_img = int(shape[0]), int(shape[1])
        y0, x0, y1, x1 = crop if crop is not None else (0, 0, h_img, w_img)
        y0, x0 = max(0, int(y0)), max(0, int(x0))
        y1, x1 = min(h_img, int(y1)), min(w_img, int(x1))
        if y1 <= y0 or x1 <= x0:
            raise ValueError("empty crop box")
        h, w = y1 - y0, x1 - x0
        scale = size / max(h, w)
        out_h = min(size, max(1, int(round(h * scale))))
        out_w = min(size, max(1, int(round(w * scale))))
        return cls(y0, x0, y1, x1, int(size), float(scale), out_h, out_w, (size - out_h) // 2, (size - out_w) // 2)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], size: int | None = None) -> Geometry:
        """The geometry recorded in a metadata row (``crop_*``, ``scale``, ``pad_*``); ``size`` is the
        dataset's frame size (taken from the row's ``size`` key when present)."""
        size = int(size if size is not None else row["size"])
        y0, x0, y1, x1 = (int(row[k]) for k in ("crop_y0", "crop_x0", "crop_y1", "crop_x1"))
        geom = cls.fit((y1, x1), size, (y0, x0, y1, x1))
        if int(row["pad_y"]) != geom.pad_y or int(row["pad_x"]) != geom.pad_x:
            raise ValueError("metadata row geometry is inconsistent with its crop box and size")
        return geom

    def columns(self) -> dict[str, Any]:
        """The metadata columns that record this geometry."""
        d = asdict(self)
        return {k: d[k] for k in ("crop_y0", "crop_x0", "crop_y1", "crop_x1", "scale", "pad_y", "pad_x")}


_CV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def apply_geometry(array: np.ndarray, geom: Geometry, *, nearest: bool = False, fill: float = 0) -> np.ndarray:
    """Crop, resize and pad one 2-D array into a (size, size) array of the same dtype.

    ``nearest=True`` for masks and label maps: centre-aligned nearest neighbour (values are never blended,
    any dtype). Otherwise area averaging when shrinking and bilinear when enlarging (OpenCV).
    """
    a = np.asarray(array)
    if a.ndim != 2:
        raise ValueError(f"apply_geometry needs a 2-D array, got shape {a.shape}")
    dtype = a.dtype
    a = a[geom.crop_y0 : geom.crop_y1, geom.crop_x0 : geom.crop_x1]
    if a.shape != (geom.out_h, geom.out_w):
        if nearest:
            a = _nearest_index(a, geom.out_h, geom.out_w)
        else:
            work = a if a.dtype in _CV_DTYPES else a.astype(np.float64)
            interp = cv2.INTER_AREA if geom.scale < 1.0 else cv2.INTER_LINEAR
            a = cv2.resize(np.ascontiguousarray(work), (geom.out_w, geom.out_h), interpolation=interp)
            if a.dtype != dtype:
                a = np.rint(a).astype(dtype) if np.issubdtype(dtype, np.integer) else a.astype(dtype)
    out = np.full((geom.size, geom.size), fill, dtype=dtype)
    out[geom.pad_y : geom.pad_y + geom.out_h, geom.pad_x : geom.pad_x + geom.out_w] = a
    return out


def _nearest_index(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Centre-aligned nearest neighbour: output pixel centre -> the source pixel that contains it."""
    h, w = a.shape
    ys = np.minimum(np.floor((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
    xs = np.minimum(np.floor((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
    return a[np.ix_(ys, xs)]
