"""Every DICOM file shipped with pydicom: decodable images ingest and match an independent reference
(pydicom's default decode + apply_modality_lut + apply_voi_lut + inversion, same resize) within 1 grey
level; everything else is in the ledger with a reason."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from cxrjepa.data.store import DatasetArtifact
from cxrjepa.ingest.api import run_ingest
from cxrjepa.ingest.clips import even_indices, rate_indices
from cxrjepa.ingest.config import IngestConfig, IngestOptions
from cxrjepa.ingest.dicom import frame_rate, non_image_kind

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SIZE = 64


def _decodable_image(path: Path):
    """(dataset, all frames) when pydicom itself can decode an image object here, else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
            if non_image_kind(ds) or "DirectoryRecordSequence" in ds:
                return None
            arr = ds.pixel_array
        except Exception:
            return None
    return ds, arr


def _reference(ds, arr: np.ndarray, crop) -> np.ndarray | None:
    """Stored frames computed independently; None when the displayed image is constant."""
    n = int(ds.get("NumberOfFrames") or 1)
    frames = arr if n > 1 else arr[None]
    if n > 1:
        fps = frame_rate(ds)
        idx = rate_indices(n, fps, 15.0, 64)[0] if not math.isnan(fps) else even_indices(n, 64)
        frames = frames[idx]
    pi = str(ds.PhotometricInterpretation).upper()
    if pi.startswith("MONOCHROME"):
        x = apply_voi_lut(apply_modality_lut(frames, ds), ds, index=0, prefer_lut=True).astype(np.float64)
    else:
        rgb = apply_color_lut(frames, ds) if pi == "PALETTE COLOR" else frames
        rgb = rgb.astype(np.float64)
        x = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    y0, x0, y1, x1 = crop
    x = x[:, y0:y1, x0:x1]
    # documented estimate: a regular subsample of at most 2**17 pixels per frame, at most 16 frames
    stride = max(1, math.ceil(math.sqrt(x.shape[1] * x.shape[2] / 2**17)))
    pick = np.unique(np.linspace(0, len(x) - 1, min(len(x), 16)).round().astype(int))
    lo, hi = np.percentile(x[pick][:, ::stride, ::stride], [0.5, 99.5])
    if not hi > lo:
        lo, hi = x[pick][:, ::stride, ::stride].min(), x[pick][:, ::stride, ::stride].max()
    if not hi > lo:
        return None
    u = np.clip((x - lo) / (hi - lo), 0, 1)
    if pi == "MONOCHROME1":
        u = 1 - u
    h, w = u.shape[1:]
    s = SIZE / max(h, w)
    oh, ow = min(SIZE, max(1, round(h * s))), min(SIZE, max(1, round(w * s)))
    out = np.zeros((len(u), SIZE, SIZE))
    py, px = (SIZE - oh) // 2, (SIZE - ow) // 2
    for i, f in enumerate(u):
        r = cv2.resize(f.astype(np.float32), (ow, oh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        out[i, py : py + oh, px : px + ow] = r
    return np.rint(out * 255)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    out = tmp_path_factory.mktemp("pydicom") / "ds"
    salt = tmp_path_factory.mktemp("salt") / "salt"
    salt.write_text("pydicom-test-salt-0123456789")
    art = run_ingest(
        out,
        IngestConfig(size=SIZE, dedupe=False),
        sources=[TEST_FILES],
        options=IngestOptions(workers=1, salt_file=salt),
    )
    return DatasetArtifact(art)


def test_every_decodable_image_matches_reference(ingested):
    meta = ingested.meta.set_index("source_path")
    ledger = {r["path"]: r for r in map(json.loads, (ingested.path / "failures.jsonl").read_text().splitlines())}
    checked = constant = 0
    for path in sorted(TEST_FILES.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(TEST_FILES).as_posix()
        got = _decodable_image(path)
        if got is None:
            # not an image pydicom can decode: ledgered with a reason, or a sidecar text file
            assert rel in ledger or path.suffix in (".txt", ".json", ".dump") or path.name == "README", rel
            if rel in ledger:
                assert ledger[rel]["reason"]
            continue
        ds, arr = got
        if rel in ledger:
            assert ledger[rel]["reason"] == "constant image", (rel, ledger[rel])
            assert _reference(ds, arr, (0, 0, int(ds.Rows), int(ds.Columns))) is None, rel
            constant += 1
            continue
        assert rel in meta.index, f"{rel} decodes with pydicom but was not ingested"
        row = meta.loc[rel]
        crop = tuple(int(row[k]) for k in ("crop_y0", "crop_x0", "crop_y1", "crop_x1"))
        ref = _reference(ds, arr, crop)
        i = int(np.flatnonzero(ingested.meta["source_path"].to_numpy() == rel)[0])
        stored = ingested.frames(i).astype(np.float64)
        assert stored.shape == ref.shape, rel
        diff = np.abs(stored - ref).max()
        assert diff <= 1, f"{rel}: stored image differs from the reference by {diff} grey levels"
        checked += 1
    assert checked >= 40
    assert constant <= 5


def test_ultrasound_region_comes_from_the_dicom_regions(ingested):
    row = ingested.meta.set_index("source_path").loc["examples_ybr_color.dcm"]
    ds = pydicom.dcmread(TEST_FILES / "examples_ybr_color.dcm", stop_before_pixels=True)
    reg = ds.SequenceOfUltrasoundRegions[0]
    assert (row.crop_y0, row.crop_x0) == (reg.RegionLocationMinY0, reg.RegionLocationMinX0)
    # this downsized test file keeps the regions of its 640x480 original: clipped to the image
    assert (row.crop_y1, row.crop_x1) == (
        min(reg.RegionLocationMaxY1 + 1, ds.Rows),
        min(reg.RegionLocationMaxX1 + 1, ds.Columns),
    )
    assert row.region_source == "SequenceOfUltrasoundRegions"
    assert row.frame_count == 15 and row.fps == 15.0  # 30 frames at 30 fps -> 15 fps


def test_non_images_and_indexes_are_skipped_with_reasons(ingested):
    ledger = {r["path"]: r for r in map(json.loads, (ingested.path / "failures.jsonl").read_text().splitlines())}
    assert ledger["dicomdirtests/DICOMDIR"]["reason"].startswith("DICOMDIR")
    assert ledger["rtplan.dcm"]["detail"] == "RT" and ledger["rtplan.dcm"]["status"] == "skipped"
    assert ledger["test-SR.dcm"]["detail"] == "SR"
    assert ledger["liver_1frame.dcm"]["detail"] == "SEG"
    assert ledger["waveform_ecg.dcm"]["detail"] == "WAVEFORM"
    assert ledger["MR_truncated.dcm"]["status"] == "rejected"
    counts = ingested.artifact.counts
    assert counts["rejected"] > 0 and counts["skipped"] >= 17
    assert sum(counts["by_reason"].values()) == counts["rejected"] + counts["skipped"] + counts["duplicates"]
