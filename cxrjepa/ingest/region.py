"""Ultrasound scan region: from SequenceOfUltrasoundRegions, else from where the frames vary over time.

Burned-in text, calipers, logos and colour bars are static while the scan region changes from frame to
frame, so the per-pixel temporal standard deviation separates them. The region is the largest connected
area of varying pixels, filled to its convex hull (so dark, quiet anatomy inside a sector is kept); the
crop is its bounding box and, optionally, pixels outside the hull are blanked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: frames used for the variance map, and the longest side it is computed at
VARIANCE_FRAMES = 32
VARIANCE_SIDE = 256
#: a region smaller than this fraction of the frame is not trusted (the full frame is kept)
MIN_REGION_FRACTION = 0.05


@dataclass
class Region:
    crop: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive) in source pixels
    source: str  # 'SequenceOfUltrasoundRegions' | 'temporal_variance'
    fov: np.ndarray | None = None  # boolean mask inside the crop (True = scan region), or None


def region_from_dicom(ds, shape: tuple[int, int]) -> Region | None:
    """The largest 2-D tissue region (RegionSpatialFormat 1) of SequenceOfUltrasoundRegions, else the
    largest region of any kind; ``None`` when the sequence is absent or unusable."""
    seq = ds.get("SequenceOfUltrasoundRegions")
    if not seq:
        return None
    best = None
    for item in seq:
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1
        except (AttributeError, TypeError, ValueError):
            continue
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(shape[0], y1), min(shape[1], x1)
        if y1 - y0 < 2 or x1 - x0 < 2:
            continue
        tissue = int(item.get("RegionSpatialFormat", 0) or 0) == 1
        key = (tissue, (y1 - y0) * (x1 - x0))
        if best is None or key > best[0]:
            best = (key, (y0, x0, y1, x1), item)
    if best is None:
        return None
    return Region(best[1], "SequenceOfUltrasoundRegions")


def spacing_from_regions(ds) -> tuple[float, float] | None:
    """(y, x) mm per pixel of the largest tissue region when its physical units are cm."""
    seq = ds.get("SequenceOfUltrasoundRegions")
    if not seq:
        return None
    for item in sorted(seq, key=lambda it: int(it.get("RegionSpatialFormat", 0) or 0) != 1):
        try:
            if int(item.PhysicalUnitsXDirection) == 3 and int(item.PhysicalUnitsYDirection) == 3:
                return abs(float(item.PhysicalDeltaY)) * 10.0, abs(float(item.PhysicalDeltaX)) * 10.0
        except (AttributeError, TypeError, ValueError):
            continue
    return None


def region_from_variance(frames: Sequence[np.ndarray], *, with_fov: bool = True) -> Region | None:
    """The scan region of a clip from its temporal variance; ``None`` with fewer than 3 frames or when no
    convincing region is found."""
    if len(frames) < 3:
        return None
    h, w = frames[0].shape[:2]
    factor = max(1.0, max(h, w) / VARIANCE_SIDE)
    sh, sw = max(1, int(round(h / factor))), max(1, int(round(w / factor)))
    pick = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), VARIANCE_FRAMES)).round().astype(int))
    small = np.stack(
        [cv2.resize(np.asarray(frames[i], dtype=np.float32), (sw, sh), interpolation=cv2.INTER_AREA) for i in pick]
    )
    std = small.std(axis=0)
    ref = float(np.percentile(std, 99))
    if ref <= 0:
        return None
    mask = (std > 0.1 * ref).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[k, cv2.CC_STAT_AREA] < MIN_REGION_FRACTION * sh * sw:
        return None
    pts = cv2.findNonZero((labels == k).astype(np.uint8))
    hull = cv2.convexHull(pts)
    hull_mask = np.zeros((sh, sw), np.uint8)
    cv2.fillConvexPoly(hull_mask, hull, 1)
    ys, xs = np.nonzero(hull_mask)
    y0, y1 = int(np.floor(ys.min() * h / sh)), int(np.ceil((ys.max() + 1) * h / sh))
    x0, x1 = int(np.floor(xs.min() * w / sw)), int(np.ceil((xs.max() + 1) * w / sw))
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
    if (y1 - y0) * (x1 - x0) < MIN_REGION_FRACTION * h * w:
        return None
    fov = None
    if with_fov:
        full = cv2.resize(hull_mask, (w, h), interpolation=cv2.INTER_NEAREST)
        fov = full[y0:y1, x0:x1].astype(bool)
        if fov.all():
            fov = None
    return Region((y0, x0, y1, x1), "temporal_variance", fov)
