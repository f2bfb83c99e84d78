"""Ultrasound cines and videos become clips of the right length, cropped to the scan region (which drops a
burned-in text box drawn outside it)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrjepa.ingest.config import IngestConfig
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.phi import Salt
from cxrjepa.ingest.process import process_input
from cxrjepa.ingest.table import Sample
from tests.dicom_files import make_dataset, write_dicom

H, W, N = 120, 160, 45  # frames of 120x160, 45 frames at 30 fps
REGION = (30, 40, 110, 140)  # y0, x0, y1, x1 of the scan region
TEXT = (4, 4, 24, 70)  # where the burned-in text sits (outside the region)


def us_clip(seed: int = 0) -> np.ndarray:
    """(N, H, W) uint8: moving speckle inside REGION, static text and a caliper cross outside."""
    rng = np.random.default_rng(seed)
    y0, x0, y1, x1 = REGION
    frames = np.zeros((N, H, W), np.uint8)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    for t in range(N):
        f = frames[t]
        blob = 120 * np.exp(-(((yy - 70 - 10 * np.sin(t / 5)) / 15) ** 2 + ((xx - 90 - t) / 20) ** 2))
        f[y0:y1, x0:x1] = np.clip(40 + blob + rng.normal(0, 25, (y1 - y0, x1 - x0)), 0, 255).astype(np.uint8)
        cv2.putText(f, "ID 12 TEST", (TEXT[1], TEXT[2] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1)
        cv2.drawMarker(f, (150, 115), 255, cv2.MARKER_CROSS, 8, 1)  # caliper, static, outside
    return frames


CTX = Context(IngestConfig(size=64), Salt(b"clip-test-salt", "env"))


def run(path: Path, ctx: Context = CTX) -> Sample:
    s = process_input(InputItem(str(path), path.name), ctx)
    assert isinstance(s, Sample), s
    return s


def assert_crop_drops_text(s: Sample) -> None:
    r = s.row
    crop = (r["crop_y0"], r["crop_x0"], r["crop_y1"], r["crop_x1"])
    ty0, tx0, ty1, tx1 = TEXT
    overlaps = not (crop[2] <= ty0 or crop[0] >= ty1 or crop[3] <= tx0 or crop[1] >= tx1)
    assert not overlaps, f"crop {crop} keeps the text box {TEXT}"
    y0, x0, y1, x1 = REGION
    assert abs(crop[0] - y0) <= 4 and abs(crop[1] - x0) <= 4 and abs(crop[2] - y1) <= 4 and abs(crop[3] - x1) <= 4, crop


def test_multiframe_dicom_clip_length_and_variance_crop(tmp_path):
    ds = make_dataset(us_clip(), modality="US", frame_time_ms=1000 / 30)
    s = run(write_dicom(ds, tmp_path / "cine.dcm"))
    assert s.frames.shape == (23, 64, 64)  # 45 frames at 30 fps -> every 2nd frame at 15 fps
    assert s.row["fps"] == 15.0 and s.row["frames"] == N and s.row["format"] == "dicom"
    assert s.row["region_source"] == "temporal_variance"
    assert_crop_drops_text(s)


def test_dicom_regions_win_over_variance(tmp_path):
    from pydicom.dataset import Dataset

    ds = make_dataset(us_clip(), modality="US", frame_time_ms=1000 / 30)
    reg = Dataset()
    y0, x0, y1, x1 = REGION
    reg.RegionSpatialFormat = 1
    reg.RegionLocationMinX0, reg.RegionLocationMinY0 = x0, y0
    reg.RegionLocationMaxX1, reg.RegionLocationMaxY1 = x1 - 1, y1 - 1
    reg.PhysicalUnitsXDirection = reg.PhysicalUnitsYDirection = 3
    reg.PhysicalDeltaX = reg.PhysicalDeltaY = 0.02
    ds.SequenceOfUltrasoundRegions = [reg]
    s = run(write_dicom(ds, tmp_path / "cine.dcm"))
    assert (s.row["crop_y0"], s.row["crop_x0"], s.row["crop_y1"], s.row["crop_x1"]) == REGION
    assert s.row["region_source"] == "SequenceOfUltrasoundRegions"
    assert s.row["pixel_spacing_x"] == pytest.approx(0.2) and s.row["spacing_source"] == "SequenceOfUltrasoundRegions"


@pytest.mark.parametrize("ext, fourcc", [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_video_clip_length_and_crop(tmp_path, ext, fourcc):
    path = tmp_path / f"clip{ext}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30.0, (W, H))
    assert writer.isOpened()
    for f in us_clip(1):
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    s = run(path)
    assert s.frames.shape == (23, 64, 64)
    assert s.row["fps"] == 15.0 and s.row["format"] == "video"
    assert_crop_drops_text(s)
    # source rate and a frame cap
    ctx = Context(IngestConfig(size=64, clip_fps=0, max_frames=40), CTX.salt)
    s2 = run(path, ctx)
    assert s2.frames.shape[0] == 40 and s2.row["fps"] == 30.0


def test_stored_clip_frames_are_in_order(tmp_path):
    """A bright bar that moves right by one step per frame must move right in the stored frames too."""
    frames = np.zeros((12, 64, 64), np.uint8)
    for t in range(12):
        frames[t, :, 4 * t : 4 * t + 4] = 200
        frames[t, 0, 0] = 1  # not constant
    path = tmp_path / "bar.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    ctx = Context(IngestConfig(size=64, us_crop=False), CTX.salt)
    s = run(path, ctx)
    assert s.frames.shape[0] == 12
    cols = [int(np.argmax(f.mean(axis=0))) for f in s.frames]
    assert cols == sorted(cols) and cols[-1] - cols[0] >= 40
