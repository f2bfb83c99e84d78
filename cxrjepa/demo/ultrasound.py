"""Short synthetic ultrasound cines: a sector scan of moving speckle with burned-in text outside it.

Each cine is a multi-frame colour DICOM (RGB or YBR_FULL) the way scanners export them: a fan-shaped scan
region whose speckle moves (tissue shifts with breathing; a dark chamber beats), and around it burned-in
annotation (institution, patient name and ID, date: fake, but the kind of text de-identification must worry
about), a depth ruler and a logo, all constant over time. About half the files carry a
SequenceOfUltrasoundRegions giving the scan region's rectangle; the rest leave it to be found.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pydicom.pixels
from pydicom.dataset import Dataset
from pydicom.tag import Tag


@dataclass(frozen=True)
class Cine:
    rows: int
    cols: int
    frames: int
    fps: float
    apex_x: float
    apex_y: float
    r0: float  # near edge of the fan (pixels from the apex)
    r1: float  # far edge
    half_angle: float  # radians
    depth_cm: float
    photometric: str  # "RGB" or "YBR_FULL"
    regions: bool  # write SequenceOfUltrasoundRegions
    beat_hz: float
    seed: int


def sample_cine(rng: np.random.Generator) -> Cine:
    rows = int(rng.integers(220, 300))
    cols = int(rng.integers(300, 400))
    r1 = rows - 12 - float(rng.uniform(0, 10))
    return Cine(
        rows=rows,
        cols=cols,
        frames=int(rng.integers(10, 21)),
        fps=float(rng.choice([20.0, 25.0, 30.0])),
        apex_x=cols / 2 + float(rng.uniform(-10, 10)),
        apex_y=float(rng.uniform(8, 16)),
        r0=float(rng.uniform(12, 24)),
        r1=r1,
        half_angle=float(np.deg2rad(rng.uniform(30, 40))),
        depth_cm=float(rng.choice([8.0, 10.0, 12.0, 14.0])),
        photometric="YBR_FULL" if rng.random() < 0.5 else "RGB",
        regions=bool(rng.random() < 0.5),
        beat_hz=float(rng.uniform(0.8, 1.6)),
        seed=int(rng.integers(2**31)),
    )


def scan_region(c: Cine) -> np.ndarray:
    """Boolean (rows, cols): the fan-shaped scan region."""
    y, x = np.mgrid[0 : c.rows, 0 : c.cols].astype(np.float32)
    dx, dy = x - np.float32(c.apex_x), y - np.float32(c.apex_y)
    r = np.hypot(dx, dy)
    theta = np.arctan2(dx, dy)
    return (r >= c.r0) & (r <= c.r1) & (np.abs(theta) <= c.half_angle)


def region_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive pixel rectangle (x0, y0, x1, y1) of a region mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def draw_cine(c: Cine, annotation: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames (frames, rows, cols, 3) uint8 and the scan region mask."""
    rng = np.random.default_rng(c.seed)
    mask = scan_region(c)
    rows, cols = c.rows, c.cols
    # tissue reflectivity, taller than the frame so it can slide with breathing
    pad = 24
    tissue = cv2.GaussianBlur(rng.random((rows + 2 * pad, cols), dtype=np.float32), (0, 0), 4.0)
    tissue = np.clip((tissue - tissue.mean()) * 6.0 + 0.55, 0.1, 1.0)
    # speckle: grains wider than tall, carried along with the tissue, partly renewed every frame
    grain = rng.rayleigh(0.8, size=(rows + 2 * pad, cols)).astype(np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), sigmaX=1.6, sigmaY=0.8)
    grain *= np.float32(0.8 / grain.mean())
    y = np.arange(rows, dtype=np.float32)[:, None]
    attenuation = np.exp(-1.2 * (y - c.apex_y) / max(c.r1, 1.0)).astype(np.float32)
    cy, cx = c.apex_y + 0.55 * c.r1, c.apex_x + float(rng.uniform(-15, 15))
    frames = np.zeros((c.frames, rows, cols, 3), np.uint8)
    overlay = _overlay(c, annotation)
    for t in range(c.frames):
        phase = 2.0 * np.pi * c.beat_hz * t / c.fps
        shift = int(round(pad + 8.0 * np.sin(phase / 3.0)))
        fresh = rng.rayleigh(0.8, size=(rows, cols)).astype(np.float32)
        speckle = 0.75 * grain[shift : shift + rows] + 0.25 * fresh
        image = tissue[shift : shift + rows] * attenuation
        # a beating dark chamber with a bright wall
        ax = 0.16 * c.r1 * (1.0 + 0.18 * np.sin(phase))
        ay = 0.11 * c.r1 * (1.0 + 0.18 * np.sin(phase))
        cv2.ellipse(image, (int(cx), int(cy)), (int(ax + 6), int(ay + 6)), 0, 0, 360, 0.95, -1)
        cv2.ellipse(image, (int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, 0.06, -1)
        grey = np.clip(image * speckle * 190.0, 0, 255).astype(np.uint8)
        grey[~mask] = 0
        frame = np.repeat(grey[:, :, None], 3, axis=2)
        np.copyto(frame, overlay, where=overlay > 0)
        frames[t] = frame
    return frames, mask


def _overlay(c: Cine, annotation: list[str]) -> np.ndarray:
    """Burned-in annotation outside the scan region: text box, depth ruler and a logo (RGB)."""
    layer = np.zeros((c.rows, c.cols, 3), np.uint8)
    box_w = min(int(c.apex_x) - 30, 6 * max(map(len, annotation), default=0) + 8)
    cv2.rectangle(layer, (2, 2), (box_w, 6 + 11 * len(annotation)), (40, 40, 40), -1)
    for i, line in enumerate(annotation):
        cv2.putText(layer, line, (4, 12 + 11 * i), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 255, 0), 1, cv2.LINE_AA)
    # depth ruler along the right edge of the fan
    x = int(c.apex_x + c.r1 * np.sin(c.half_angle)) + 8
    for k in range(int(c.depth_cm) + 1):
        yk = int(c.apex_y + c.r1 * k / c.depth_cm)
        cv2.line(layer, (x, yk), (x + (6 if k % 5 == 0 else 3), yk), (255, 255, 255), 1)
    cv2.rectangle(layer, (c.cols - 30, 4), (c.cols - 6, 16), (0, 200, 0), -1)
    # nothing burned in may reach into the scan region
    layer[scan_region(c)] = 0
    return layer


def set_pixels(ds: Dataset, c: Cine, frames: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Pixel and cine attributes, the scan region sequence (if ``c.regions``) and uncompressed PixelData."""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = c.photometric
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = c.frames
    ds.Rows, ds.Columns = c.rows, c.cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.FrameTime = f"{1000.0 / c.fps:.4f}".rstrip("0").rstrip(".")
    ds.CineRate = int(round(c.fps))
    ds.RecommendedDisplayFrameRate = int(round(c.fps))
    ds.FrameIncrementPointer = Tag(0x0018, 0x1063)  # Frame Time
    if c.regions:
        region = Dataset()
        region.RegionSpatialFormat = 1  # 2D
        region.RegionDataType = 1  # tissue
        region.RegionFlags = 0
        region.RegionLocationMinX0, region.RegionLocationMinY0 = box[0], box[1]
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = box[2], box[3]
        region.PhysicalUnitsXDirection = 3  # cm
        region.PhysicalUnitsYDirection = 3
        delta = c.depth_cm / c.r1
        region.PhysicalDeltaX = delta
        region.PhysicalDeltaY = delta
        ds.SequenceOfUltrasoundRegions = [region]
    data = frames if c.photometric == "RGB" else pydicom.pixels.convert_color_space(frames, "RGB", "YBR_FULL")
    ds.PixelData = np.ascontiguousarray(data).tobytes()
