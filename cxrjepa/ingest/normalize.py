"""Intensity normalization and the last steps of the pixel pipeline, shared by every input format.

    grey float frames (after modality LUT, VOI/window, colour to grey; cropped to the region)
      -> robust range: percentiles (0.5, 99.5 by default) over the sample's frames (inside the field of view)
      -> scale to [0, 1] and clip; invert (MONOCHROME1) as 1 - x, which equals inverting after windowing
      -> geometry (resize keeping aspect, pad to a square)  -> quantize to uint8 / uint16

A sample whose range is empty (a constant image) is rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrjepa.ingest.geometry import Geometry, apply_geometry

#: at most this many pixels per frame enter the percentile estimate (a regular subsample of larger frames)
MAX_RANGE_PIXELS = 1 << 17
#: at most this many frames of a clip enter the percentile estimate (evenly spaced)
MAX_RANGE_FRAMES = 16


class ConstantImage(ValueError):
    """The frames hold a single value: nothing to learn from; a rejection, not a sample."""


def _subsample(frame: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    if fov is not None:
        return frame[fov]
    n = frame.shape[0] * frame.shape[1]
    stride = max(1, math.ceil(math.sqrt(n / MAX_RANGE_PIXELS)))
    return frame[::stride, ::stride].ravel()


def robust_range(
    frames: Sequence[np.ndarray], low: float, high: float, fov: np.ndarray | None = None
) -> tuple[float, float]:
    """Percentiles ``low``/``high`` of the frames' values (inside the boolean ``fov`` mask when given).

    Falls back to min/max when the percentiles coincide (a mostly flat image with some structure);
    raises :class:`ConstantImage` when every value is the same.
    """
    if len(frames) == 0:
        raise ConstantImage("no frames")
    pick = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), MAX_RANGE_FRAMES)).round().astype(int))
    values = np.concatenate([_subsample(np.asarray(frames[i]), fov) for i in pick]).astype(np.float32, copy=False)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ConstantImage("no finite values")
    lo, hi = np.percentile(values, [low, high])
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        raise ConstantImage("constant image")
    return float(lo), float(hi)


@dataclass
class StoredFrames:
    """Frames as stored plus the numbers the metadata table records about them."""

    frames: np.ndarray  # (T, size, size) uint8|uint16
    intensity_lo: float
    intensity_hi: float
    geometry: Geometry


def to_unit(frame: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    """Map [lo, hi] to [0, 1] (clipped) as float32; ``invert`` gives 1 - x."""
    x = (np.asarray(frame, dtype=np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(x, 0.0, 1.0, out=x)
    if invert:
        np.subtract(np.float32(1.0), x, out=x)
    return x


def quantize(x: np.ndarray, dtype: str) -> np.ndarray:
    maxv = float(np.iinfo(np.dtype(dtype)).max)
    return np.rint(x * np.float32(maxv)).astype(dtype)


def store_frames(
    frames: Sequence[np.ndarray],
    *,
    size: int,
    dtype: str,
    low: float,
    high: float,
    invert: bool = False,
    crop: tuple[int, int, int, int] | None = None,
    fov: np.ndarray | None = None,
    intensity_range: tuple[float, float] | None = None,
) -> StoredFrames:
    """The whole tail of the pipeline for one sample's grey frames (full source size, same shape each).

    ``crop`` is the region kept (source pixels); ``fov`` an optional boolean mask of the field of view
    inside the crop (pixels outside it are set to 0 after normalization, and do not enter the range).
    """
    if len(frames) == 0:
        raise ConstantImage("no frames")
    shape = np.asarray(frames[0]).shape[:2]
    geom = Geometry.fit(shape, size, crop)
    cropped = [np.asarray(f)[geom.crop_y0 : geom.crop_y1, geom.crop_x0 : geom.crop_x1] for f in frames]
    lo, hi = intensity_range if intensity_range is not None else robust_range(cropped, low, high, fov)
    out = np.empty((len(frames), size, size), dtype=dtype)
    whole = Geometry.fit(cropped[0].shape, size)
    for i, f in enumerate(cropped):
        x = to_unit(f, lo, hi, invert)
        if fov is not None:
            x[~fov] = 0.0
        out[i] = quantize(apply_geometry(x, whole), dtype)
    return StoredFrames(out, lo, hi, geom)
