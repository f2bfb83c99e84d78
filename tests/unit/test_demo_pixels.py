"""Demo DICOM pixels: every storage variant decodes to the intended picture through the documented pipeline
(stored -> Modality LUT -> VOI LUT / window -> MONOCHROME1 inverted after windowing)."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxrjepa.demo import codecs, dicom
from cxrjepa.demo.phantom import Findings, draw, sample_anatomy, sample_findings, sample_view
from cxrjepa.demo.storage import Storage, set_pixel_tags, to_stored


def present(ds: pydicom.Dataset) -> np.ndarray:
    """The documented presentation pipeline, with pydicom's own LUT functions."""
    modality = apply_modality_lut(ds.pixel_array, ds)
    if modality.dtype.kind == "f" and np.array_equal(modality, np.round(modality)):
        modality = modality.astype(np.int64)  # a VOI LUT is indexed by integers
    out = apply_voi_lut(modality, ds, prefer_lut=True).astype(np.float64)
    return -out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def check_presented(out: np.ndarray, brightness: np.ndarray, st: Storage, *, lossy: bool = False) -> None:
    """``out`` (presented) is the intended picture: increasing in brightness, linear for LINEAR/no VOI."""
    p = brightness.astype(np.float64).ravel()
    o = out.ravel()
    if lossy:
        assert np.corrcoef(o, p)[0, 1] > 0.99
        return
    if st.voi in ("lut", "sigmoid"):
        # a monotone curve: sorting by brightness sorts the presented values
        ordered = o[np.argsort(p, kind="stable")]
        assert np.all(np.diff(ordered) >= -1e-9)
        assert ordered[-1] > ordered[0]
        return
    slope, intercept = np.polyfit(p, o, 1)
    assert slope > 0
    step = abs(slope) / abs(st.bright - st.dark)  # one stored level, in presented units
    assert np.abs(o - (slope * p + intercept)).max() <= 0.51 * step + 1e-6 * abs(slope)


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    rng = np.random.default_rng(7)
    a = sample_anatomy(rng)
    v = sample_view(rng, 90, 76, "PA")  # even pixel count: every encoder accepts it
    return draw(a, v, sample_findings(rng, a, "PA", nodule=True, effusion=True)).image


def _st(syntax, ba, bs, signed, mono1, slope, intercept, voi, span=0.7) -> Storage:
    lo, hi = (-(1 << (bs - 1)), (1 << (bs - 1)) - 1) if signed else (0, (1 << bs) - 1)
    start = lo + int((hi - lo) * 0.1)
    end = start + int((hi - lo) * span)
    dark, bright = (end, start) if mono1 else (start, end)
    return Storage(
        syntax,
        ba,
        bs,
        signed,
        "MONOCHROME1" if mono1 else "MONOCHROME2",
        dark,
        bright,
        slope,
        intercept,
        voi,
        window_margin=0.05,
        lut_gamma=1.4,
    )


VARIANTS = [
    _st("explicit", 8, 8, False, False, None, None, "window"),
    _st("implicit", 8, 8, False, True, None, None, "none"),
    _st("jpeg-baseline", 8, 8, False, False, None, None, "window"),
    _st("jpeg-baseline", 8, 8, False, True, None, None, "windows"),
    _st("explicit", 16, 10, False, True, 1.0, -1024.0, "window"),
    _st("rle", 16, 12, False, True, 1.0, 0.0, "windows"),
    _st("jpeg2000", 16, 12, True, False, 1.0, -1024.0, "window"),
    _st("jpeg-lossless", 16, 16, True, True, 2.0, -4096.0, "sigmoid"),
    _st("implicit", 16, 10, False, False, None, None, "lut"),
    _st("deflated", 16, 14, False, True, 1.0, 0.0, "lut"),
    _st("jpeg-ls", 16, 16, False, False, 0.5, 0.0, "none"),
    _st("jpeg-ls", 16, 12, True, True, None, None, "window"),
    _st("jpeg-lossless", 16, 14, False, False, 2.0, -4096.0, "window"),
    _st("jpeg2000", 8, 8, False, True, 1.0, 0.0, "lut"),
    _st("rle", 16, 16, True, False, 0.5, 0.0, "sigmoid", span=0.9),
]


def _write_and_read(brightness: np.ndarray, st: Storage) -> pydicom.Dataset:
    identity = dicom.Identity("DEMO000001", "PHANTOM^ALICE", "F", dt.date(1970, 1, 2), None)
    study = dicom.sample_study(np.random.default_rng(0), 0, 0, dt.date(2020, 5, 6))
    ds = dicom.radiograph(identity, study, modality="DX", view="PA", spacing_mm=0.5, with_age=True)
    set_pixel_tags(ds, st, *brightness.shape)
    ds.PixelData = to_stored(brightness, st).tobytes()
    codecs.encode(ds, st.syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


@pytest.mark.parametrize(
    "st",
    VARIANTS,
    ids=lambda s: f"{s.syntax}-{s.bits_allocated}/{s.bits_stored}{'s' if s.signed else ''}-{s.photometric[-1]}-{s.voi}",
)
def test_every_storage_variant_decodes_to_the_intended_picture(picture, st):
    if codecs.encoder_for(st.syntax) is None:
        pytest.skip(f"{st.syntax} cannot be encoded on this install")
    read = _write_and_read(picture, st)
    assert read.file_meta.TransferSyntaxUID == codecs.BY_KEY[st.syntax].uid
    assert read.PhotometricInterpretation == st.photometric
    assert (read.BitsAllocated, read.BitsStored, read.PixelRepresentation) == (
        st.bits_allocated,
        st.bits_stored,
        int(st.signed),
    )
    stored = read.pixel_array
    expected = to_stored(picture, st)
    lossy = codecs.BY_KEY[st.syntax].lossy
    if lossy:
        assert np.abs(stored.astype(int) - expected.astype(int)).mean() < 2.0
    else:
        np.testing.assert_array_equal(stored, expected)
    check_presented(present(read), picture, st, lossy=lossy)


def test_monochrome1_files_store_the_inverted_picture(picture):
    mono1 = _write_and_read(picture, _st("explicit", 16, 12, False, True, None, None, "window"))
    mono2 = _write_and_read(picture, _st("explicit", 16, 12, False, False, None, None, "window"))
    p = picture.ravel()
    # raw stored values fall as the picture brightens in MONOCHROME1, rise in MONOCHROME2 ...
    assert np.corrcoef(mono1.pixel_array.ravel().astype(float), p)[0, 1] < -0.999
    assert np.corrcoef(mono2.pixel_array.ravel().astype(float), p)[0, 1] > 0.999
    # ... and inverting after windowing gives the same picture for both
    a, b = present(mono1).ravel(), present(mono2).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.9999


def test_window_is_applied_after_rescale(picture):
    st = _st("explicit", 16, 12, False, False, 2.0, -4096.0, "window")
    read = _write_and_read(picture, st)
    modality = apply_modality_lut(read.pixel_array, read)
    lo, hi = float(st.modality(st.dark)), float(st.modality(st.bright))
    assert modality.min() >= lo - 1e-6 and modality.max() <= hi + 1e-6
    # the window covers the modality range: nothing is clipped
    center, width = float(read.WindowCenter), float(read.WindowWidth)
    assert center - 0.5 - (width - 1) / 2 <= lo and hi <= center - 0.5 + (width - 1) / 2
    out = apply_voi_lut(modality, read)
    # pydicom maps the window onto the rescaled stored range; no value may hit either end
    y_min, y_max = 0 * 2.0 - 4096.0, 4095 * 2.0 - 4096.0
    assert y_min < out.min() and out.max() < y_max


def test_jpeg_baseline_refuses_16_bit():
    st = _st("jpeg-baseline", 16, 12, False, False, None, None, "window")
    if codecs.encoder_for("jpeg-baseline") is None:
        pytest.skip("no JPEG baseline encoder here")
    with pytest.raises(ValueError, match="8-bit"):
        _write_and_read(np.zeros((4, 4), np.float32), st)


def test_findings_free_render_differs_only_by_findings():
    rng = np.random.default_rng(3)
    a = sample_anatomy(rng)
    v = sample_view(rng, 120, 100, "PA")
    f = sample_findings(rng, a, "PA", nodule=True, effusion=False)
    with_nodule, without = draw(a, v, f).image, draw(a, v, Findings()).image
    diff = with_nodule - without
    n = f.nodules[0]
    cy, cx = int(round(v.top + n.y * v.scale)), int(round(v.cx + n.x * v.scale))
    assert diff[cy, cx] > 0.1
    far = np.ones_like(diff, bool)
    yy, xx = np.mgrid[: diff.shape[0], : diff.shape[1]]
    for n in f.nodules:
        far &= (yy - (v.top + n.y * v.scale)) ** 2 + (xx - (v.cx + n.x * v.scale)) ** 2 > (4 * n.radius * v.scale) ** 2
    assert np.abs(diff[far]).max() < 1e-6
