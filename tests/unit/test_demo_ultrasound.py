"""Demo ultrasound cines: multi-frame colour DICOM, moving speckle inside the scan region only, burned-in
text outside it, and SequenceOfUltrasoundRegions that tells the truth."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxrjepa.demo import DemoConfig, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("us") / "demo"
    run_demo(out, DemoConfig(n=2, seed=5, ultrasound=4, min_size=80, max_size=100))
    return out


def _rows(demo: Path) -> list[dict]:
    with open(demo / "ultrasound.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_cines_are_listed_and_decode(demo):
    rows = _rows(demo)
    assert len(rows) == 4
    assert {r["photometric"] for r in rows} <= {"RGB", "YBR_FULL"}
    for row in rows:
        ds = pydicom.dcmread(demo / "ultrasound" / row["file"])
        assert ds.Modality == "US" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"
        assert ds.PatientID == row["patient_id"] and ds.BurnedInAnnotation == "YES"
        assert ds.PhotometricInterpretation == row["photometric"]
        assert ds.file_meta.TransferSyntaxUID.name == row["transfer_syntax"]
        frames = ds.pixel_array  # pydicom converts YBR_FULL to RGB
        assert frames.shape == (int(row["frames"]), ds.Rows, ds.Columns, 3) and frames.dtype == np.uint8
        assert float(ds.FrameTime) == pytest.approx(1000.0 / float(row["fps"]), rel=1e-3)


def test_only_the_scan_region_moves_and_text_sits_outside_it(demo):
    for row in _rows(demo):
        ds = pydicom.dcmread(demo / "ultrasound" / row["file"])
        frames = ds.pixel_array.astype(np.int16)
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        inside = np.zeros(frames.shape[1:3], bool)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        moving = (frames.max(axis=0) - frames.min(axis=0)).max(axis=-1) > 3  # YBR round trips move by <= 1
        assert moving[inside].mean() > 0.3  # the fan is alive
        assert not moving[~inside].any()  # nothing outside the region changes over time
        static = frames[0][~inside]
        assert (static > 0).any()  # burned-in annotation and ruler outside the region
        yellow = (frames[0][..., 0] > 150) & (frames[0][..., 1] > 150) & (frames[0][..., 2] < 100)
        assert yellow.any() and not (yellow & inside & moving).any()


def test_ultrasound_regions_match_the_scan_region(demo):
    rows = _rows(demo)
    for row in rows:
        ds = pydicom.dcmread(demo / "ultrasound" / row["file"], stop_before_pixels=True)
        if int(row["regions"]):
            (region,) = ds.SequenceOfUltrasoundRegions
            box = (
                region.RegionLocationMinX0,
                region.RegionLocationMinY0,
                region.RegionLocationMaxX1,
                region.RegionLocationMaxY1,
            )
            assert box == tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1"))
            assert region.PhysicalUnitsXDirection == 3 and region.PhysicalDeltaX > 0
        else:
            assert "SequenceOfUltrasoundRegions" not in ds
