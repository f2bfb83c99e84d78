"""Volumes (SimpleITK formats) become one sample whose frames are slices; 2-D files one frame."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from cxrjepa.ingest.config import IngestConfig
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.phi import Salt
from cxrjepa.ingest.process import process_input
from cxrjepa.ingest.table import Sample

CTX = Context(IngestConfig(size=32, max_slices=6), Salt(b"volume-test-salt", "env"))


def run(path, ctx=CTX):
    return process_input(InputItem(str(path), path.name), ctx)


def test_nifti_volume_becomes_evenly_spaced_slices(tmp_path):
    vol = np.zeros((11, 20, 30), np.int16)  # z, y, x
    for z in range(11):
        vol[z, 5:15, 2 + 2 * z : 6 + 2 * z] = 100 + 50 * z  # a block moving right with z, brighter with z
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))  # index axes already LPS: reorientation is a no-op
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(img, str(path))
    s = run(path)
    assert isinstance(s, Sample), s
    assert s.frames.shape == (6, 32, 32)  # 11 slices -> 6 evenly spaced (0, 2, 4, 6, 8, 10)
    assert s.row["format"] == "volume" and s.row["frames"] == 11
    assert s.row["pixel_spacing_x"] == pytest.approx(0.7) and s.row["pixel_spacing_y"] == pytest.approx(0.8)
    # one intensity range for the volume: later slices stay brighter; the block keeps moving right
    peaks = [f.max() for f in s.frames]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]
    cols = [int(np.argmax(f.max(axis=0))) for f in s.frames]
    assert cols == sorted(cols) and cols[0] < cols[-1]


def test_2d_mha_is_one_frame_and_4d_is_rejected(tmp_path):
    flat = sitk.GetImageFromArray(np.tile(np.arange(40, dtype=np.float32), (24, 1)))
    sitk.WriteImage(flat, str(tmp_path / "slice.mha"))
    s = run(tmp_path / "slice.mha")
    assert isinstance(s, Sample) and s.frames.shape == (1, 32, 32)
    four = sitk.GetImageFromArray(np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32))
    sitk.WriteImage(four, str(tmp_path / "series.nrrd"))
    r = run(tmp_path / "series.nrrd")
    assert not isinstance(r, Sample) and r.reason == "unsupported image shape"
