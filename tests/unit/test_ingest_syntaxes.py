"""Synthetic DICOMs written in every transfer syntax this install can encode ingest to the same pixels as
their uncompressed original (lossless: exactly; lossy: closely)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from cxrjepa.data.store import DatasetArtifact
from cxrjepa.ingest.api import run_ingest
from cxrjepa.ingest.config import IngestConfig, IngestOptions
from tests.dicom_files import LOSSY, encodable_syntaxes, make_dataset, phantom, write_dicom

CASES = {
    "mono2_12bit_window": dict(pixels=phantom(48, 40, bits=12, seed=1), bits_stored=12, window=(1800, 2400)),
    "mono1_10bit": dict(pixels=phantom(40, 56, bits=10, seed=2), bits_stored=10, photometric="MONOCHROME1"),
    "mono2_8bit": dict(pixels=phantom(44, 44, bits=8, seed=3).astype(np.uint8), bits_stored=8),
    "signed_16bit_rescale": dict(
        pixels=(phantom(40, 40, bits=12, seed=4).astype(np.int32) - 2048).astype(np.int16),
        signed=True,
        bits_stored=16,
        rescale=(1, -1024),
        modality="CT",
    ),
    "rgb_8bit": dict(
        pixels=np.stack([phantom(36, 48, bits=8, seed=s) for s in (5, 6, 7)], -1).astype(np.uint8),
        photometric="RGB",
        modality="OT",
    ),
    "us_cine_8bit": dict(
        pixels=phantom(40, 48, bits=8, seed=8, frames=4).astype(np.uint8), modality="US", frame_time_ms=100.0
    ),
}


def _compatible(ts, case: str) -> bool:
    if ts == JPEGBaseline8Bit:
        return "8bit" in case and "signed" not in case
    return True


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    src = tmp_path_factory.mktemp("syntaxes")
    expected = {}
    for case, kw in CASES.items():
        kw = dict(kw)
        pixels = kw.pop("pixels")
        ds = make_dataset(pixels, **kw)
        for ts in encodable_syntaxes():
            if _compatible(ts, case):
                write_dicom(ds, src / case / f"{ts}.dcm", ts)
                expected[f"{case}/{ts}.dcm"] = (case, ts)
        for ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):  # bare data sets, no preamble / meta
            write_dicom(ds, src / case / f"bare-{ts}.dcm", ts, preamble=False)
            expected[f"{case}/bare-{ts}.dcm"] = (case, ts)
    out = tmp_path_factory.mktemp("out") / "ds"
    salt = src.parent / "salt.txt"
    salt.write_text("syntax-test-salt-1234")
    art = run_ingest(
        out, IngestConfig(size=32, dedupe=False), sources=[src], options=IngestOptions(workers=1, salt_file=salt)
    )
    return DatasetArtifact(art), expected


def test_every_encodable_syntax_round_trips(ingested):
    data, expected = ingested
    meta = data.meta
    paths = list(meta["source_path"])
    assert data.artifact.counts["rejected"] == 0, (data.path / "failures.jsonl").read_text()
    assert sorted(paths) == sorted(expected)
    seen = set()
    for rel, (case, ts) in expected.items():
        ref_i = paths.index(f"{case}/{ExplicitVRLittleEndian}.dcm")
        i = paths.index(rel)
        ref, got = data.frames(ref_i).astype(int), data.frames(i).astype(int)
        assert got.shape == ref.shape, rel
        diff = np.abs(got - ref)
        if ts in LOSSY:
            # lossy codecs drop the phantom's noise: the image must still be the same picture
            corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
            assert corr > 0.97 and diff.mean() < 10, f"{rel}: lossy {ts.name} too far from the original"
        else:
            assert diff.max() == 0, f"{rel}: {ts.name} does not round-trip"
        assert meta.loc[i, "transfer_syntax"] == (str(ts) if not rel.split("/")[-1].startswith("bare") else str(ts))
        seen.add(ts)
    assert seen == set(encodable_syntaxes())  # native x4, RLE, JPEG 2000 x2, and GDCM's JPEG-LS / lossless / baseline


def test_clip_and_colour_cases(ingested):
    data, _ = ingested
    meta = data.meta.set_index("source_path")
    us = meta.loc[f"us_cine_8bit/{ExplicitVRLittleEndian}.dcm"]
    assert us.frame_count == 4 and us.frames == 4 and us.fps == 10.0  # 10 fps source, below the 15 fps cap
    rgb = meta.loc[f"rgb_8bit/{ExplicitVRLittleEndian}.dcm"]
    assert rgb.photometric == "RGB" and rgb.frame_count == 1
    mono1 = meta.loc[f"mono1_10bit/{ExplicitVRLittleEndian}.dcm"]
    assert bool(mono1.inverted)


def test_streamed_pixel_data_equals_in_memory(tmp_path, monkeypatch):
    """Pixel data above the defer size is decoded from the open file frame by frame: same result."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, JPEG2000Lossless, RLELossless

    from cxrjepa.ingest import dicom, dicom_pixels
    from cxrjepa.ingest.context import Context, InputItem
    from cxrjepa.ingest.phi import Salt
    from cxrjepa.ingest.process import process_input

    streamed_sources = []
    real_options = dicom_pixels.as_pixel_options
    monkeypatch.setattr(dicom_pixels, "as_pixel_options", lambda ds: streamed_sources.append(1) or real_options(ds))
    ctx = Context(IngestConfig(size=32), Salt(b"stream-test-salt", "env"))
    cine = make_dataset(phantom(40, 48, bits=12, frames=6, seed=3), bits_stored=12, frame_time_ms=200.0, modality="XA")
    still = make_dataset(phantom(50, 40, bits=12, seed=4), bits_stored=12)
    for ts in (
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEG2000Lossless,
    ):
        for name, ds in (("cine", cine), ("still", still)):
            path = write_dicom(ds, tmp_path / f"{name}-{ts}.dcm", ts)
            item = InputItem(str(path), path.name)
            monkeypatch.setattr(dicom, "DEFER_SIZE", 1 << 30)
            in_memory = process_input(item, ctx)
            monkeypatch.setattr(dicom, "DEFER_SIZE", 256)
            streamed = process_input(item, ctx)
            assert np.array_equal(in_memory.frames, streamed.frames), (name, ts.name)
            assert streamed.frames.shape[0] == (6 if name == "cine" else 1)
    assert len(streamed_sources) == 8  # every syntax but deflated (inflated in memory) was streamed
