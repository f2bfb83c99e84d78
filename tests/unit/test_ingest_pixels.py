"""Pixel-level behaviour of the DICOM pipeline: modality LUT -> VOI -> MONOCHROME1 inversion -> range."""

from __future__ import annotations

import numpy as np
import pytest

from cxrjepa.ingest.config import IngestConfig
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.ledger import Record
from cxrjepa.ingest.phi import Salt
from cxrjepa.ingest.process import process_input
from cxrjepa.ingest.table import Sample
from tests.dicom_files import make_dataset, write_dicom

SIZE = 32
CTX = Context(IngestConfig(size=SIZE), Salt(b"unit-test-salt", "env"))


def ingest_one(tmp_path, ds, name="x.dcm", ctx=CTX) -> Sample | Record:
    path = write_dicom(ds, tmp_path / name)
    return process_input(InputItem(str(path), name), ctx)


def three_bands(low, mid_lo, mid_hi, high, dtype=np.uint16):
    """Left third ``low``, middle third a ramp mid_lo..mid_hi along x, right third ``high`` (32x32)."""
    img = np.empty((SIZE, SIZE), dtype=np.float64)
    img[:, :11] = low
    img[:, 11:21] = np.linspace(mid_lo, mid_hi, 10)[None, :]
    img[:, 21:] = high
    return img.astype(dtype)


def test_monochrome1_is_inverted_after_windowing(tmp_path):
    # below the window (700) must end up white, above it (1300) black, the ramp inside descending.
    px = three_bands(700, 800, 1200, 1300)
    s = ingest_one(tmp_path, make_dataset(px, photometric="MONOCHROME1", bits_stored=12, window=(1000, 400)))
    assert isinstance(s, Sample), s
    img = s.frames[0]
    assert (img[:, :11] == 255).all() and (img[:, 21:] == 0).all()
    ramp = img[0, 11:21].astype(int)
    assert (np.diff(ramp) < 0).all()
    assert s.row["inverted"] and s.row["voi"] == "window"
    assert (s.row["window_center"], s.row["window_width"]) == (1000, 400)
    # a pipeline inverting against 2**BitsStored - 1 before windowing would put both sides above the
    # window (4095-700=3395, 4095-1300=2795) and make them equal:
    assert img[0, 0] != img[0, -1]


def test_voi_window_is_honoured(tmp_path):
    px = three_bands(700, 800, 1200, 1300)
    s = ingest_one(tmp_path, make_dataset(px, bits_stored=12, window=(1000, 400)))
    img = s.frames[0].astype(int)
    assert (img[:, :11] == 0).all() and (img[:, 21:] == 255).all()
    ramp = img[0, 11:21]
    assert (np.diff(ramp) > 0).all()
    # linear window: values inside map linearly (pydicom's DICOM formula); the ramp's middle is mid-grey
    assert abs((ramp[4] + ramp[5]) / 2 - 127.5) < 12
    assert not s.row["inverted"]


def test_without_window_the_robust_range_ignores_outliers(tmp_path):
    rng = np.random.default_rng(0)
    px = np.tile(np.linspace(1000, 2000, SIZE), (SIZE, 1))
    px[rng.integers(0, SIZE, 3), rng.integers(0, SIZE, 3)] = 4095  # a few hot pixels (0.3 %)
    s = ingest_one(tmp_path, make_dataset(px.astype(np.uint16), bits_stored=12))
    img = s.frames[0].astype(int)
    assert s.row["voi"] == "none"
    assert s.row["intensity_hi"] < 2100  # the hot pixels do not set the range
    assert img[5, 0] <= 3 and img[5, -2] >= 245


def test_signed_data_with_rescale_keeps_its_order(tmp_path):
    # CT-like: signed stored values, HU = stored - 1024; naive unsigned casting would wrap negatives
    px = three_bands(-1000, -100, 100, 1000, dtype=np.int16)
    s = ingest_one(tmp_path, make_dataset(px, modality="CT", signed=True, bits_stored=16, rescale=(1, -1024)))
    img = s.frames[0].astype(int)
    assert s.row["signed"]
    assert img[0, 0] == 0 and img[0, -1] == 255
    assert (np.diff(img[0, 11:21]) > 0).all()
    assert s.row["intensity_lo"] == pytest.approx(-2024, abs=1) and s.row["intensity_hi"] == pytest.approx(-24, abs=1)


def test_modality_lut_comes_before_the_window(tmp_path):
    # stored 0..100 with slope 10: a window on the rescaled values (center 500, width 200) keeps 400..600
    px = np.tile(np.linspace(0, 100, SIZE), (SIZE, 1)).astype(np.uint16)
    s = ingest_one(tmp_path, make_dataset(px, bits_stored=12, rescale=(10, 0), window=(500, 200)))
    img = s.frames[0].astype(int)[0]
    values = np.linspace(0, 100, SIZE) * 10
    assert (img[values < 390] == 0).all() and (img[values > 610] == 255).all()
    inside = (values > 410) & (values < 590)
    assert inside.any() and ((img[inside] > 0) & (img[inside] < 255)).all()


def test_voi_lut_sequence_is_applied(tmp_path):
    px = np.tile(np.arange(SIZE, dtype=np.uint16) * 4, (SIZE, 1))  # 0..124
    lut = np.arange(256)[::-1] * 100  # a decreasing LUT: the image must come out reversed
    s = ingest_one(tmp_path, make_dataset(px, bits_stored=8, voi_lut=lut))
    img = s.frames[0].astype(int)
    assert s.row["voi"] == "voi_lut"
    assert (np.diff(img[0]) <= 0).all() and img[0, 0] > img[0, -1]


def test_a_constant_image_is_a_rejection(tmp_path):
    r = ingest_one(tmp_path, make_dataset(np.full((SIZE, SIZE), 77, np.uint16), bits_stored=12))
    assert isinstance(r, Record) and r.reason == "constant image" and r.status == "rejected"


def test_window_that_maps_everything_to_one_value_is_a_rejection(tmp_path):
    px = np.tile(np.linspace(100, 200, SIZE), (SIZE, 1)).astype(np.uint16)
    r = ingest_one(tmp_path, make_dataset(px, bits_stored=12, window=(3000, 10)))
    assert isinstance(r, Record) and r.reason == "constant image"


def test_uint16_storage_keeps_precision(tmp_path):
    px = np.tile(np.linspace(0, 4095, SIZE), (SIZE, 1)).astype(np.uint16)
    ctx = Context(IngestConfig(size=SIZE, dtype="uint16", percentile_low=0, percentile_high=100), CTX.salt)
    s = ingest_one(tmp_path, make_dataset(px, bits_stored=12), ctx=ctx)
    img = s.frames[0]
    assert img.dtype == np.uint16 and img[0, 0] == 0 and img[0, -1] == 65535
    expected = np.rint(px[0] / 4095 * 65535)
    assert np.abs(img[0].astype(float) - expected).max() <= 1
