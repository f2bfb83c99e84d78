"""Decode workers isolate every input, with one worker as with several: a native crash, a hang or a memory
blow-up on an input becomes that input's ledger row, the rest of its unit is ingested exactly as it would
be without it, and a plugin that crashed on an input is not tried on it again (issue 16, items 1-3, 9)."""

from __future__ import annotations

import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1

from cxrjepa.ingest.config import IngestConfig
from cxrjepa.ingest.context import Context
from cxrjepa.ingest.discover import discover
from cxrjepa.ingest.phi import Salt
from cxrjepa.ingest.pool import Limits, process_units
from cxrjepa.ingest.staging import Staging, make_units
from tests.dicom_files import make_dataset, phantom, write_dicom
from tests.ingest_hooks import first_plugin, hostile

CTX = Context(IngestConfig(size=16), Salt(b"isolation-test-salt", "env"))


def _run(src, out, workers: int, unit_size: int, process, limits: Limits | None = None) -> tuple[dict, dict]:
    """Ingest ``src`` into staging with ``process`` in the workers: (rows by path, ledger records by path)."""
    items = discover([src])
    staging = Staging(out)
    staging.prepare(items, unit_size, 16, "uint8")
    units = make_units(items, unit_size)
    process_units(out, units, CTX, workers, lambda r: None, limits or Limits(seconds=60, memory_mb=1024), process)
    rows, records = {}, {}
    for u in units:
        data = staging.load(u.index)
        rows.update({r["source_path"]: r for r in data["rows"]})
        records.update({r["path"]: r for r in data["records"]})
    return rows, records


def _same_sample(a: dict, b: dict) -> bool:
    keys = ("sample_id", "pixel_hash", "rows", "cols", "intensity_lo", "intensity_hi")
    return all(a[k] == b[k] for k in keys)


@pytest.mark.parametrize("workers", [1, 2])
def test_crash_hang_and_memory_bomb_become_ledger_rows(tmp_path, workers):
    src = tmp_path / "in"
    names = [
        "a00.dcm",
        "b_ABORT.dcm",
        "c02.dcm",
        "d03.dcm",
        "e_HANG.dcm",
        "f05.dcm",
        "g06.dcm",
        "h_BOMB.dcm",
        "i08.dcm",
        "j_SEGV.dcm",
        "k10.dcm",
        "l11.dcm",
    ]
    for i, name in enumerate(names):
        write_dicom(make_dataset(phantom(48, 40, seed=i), bits_stored=12), src / name, JPEG2000Lossless)
    rows, records = _run(src, tmp_path / "out", workers, 4, hostile, Limits(seconds=4, memory_mb=1024))
    assert {p: (r["reason"], r.get("detail", "")) for p, r in records.items()} == {
        "b_ABORT.dcm": ("the decoder crashed on this input", "SIGABRT"),
        "e_HANG.dcm": ("decoding took longer than the time limit", "4 s"),
        "h_BOMB.dcm": ("decoding needed more memory than the limit", "1024 MB"),
        "j_SEGV.dcm": ("the decoder crashed on this input", "SIGSEGV"),
    }
    assert all(r["status"] == "rejected" for r in records.values())
    # every other input, including those sharing a unit with a crasher, as if it had been alone
    (tmp_path / "alone").mkdir()
    for name in rows:
        (tmp_path / "alone" / name).write_bytes((src / name).read_bytes())
    alone, none = _run(tmp_path / "alone", tmp_path / "out_alone", 1, 100, None)
    assert not none and sorted(rows) == sorted(alone) and len(rows) == 8
    assert all(_same_sample(rows[p], alone[p]) for p in rows)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_plugin_that_crashes_on_an_input_is_not_tried_on_it_again(tmp_path, workers):
    """GDCM inputs abort the worker when gdcm is tried on them (as gdcm does on some corrupt files): they get
    the next plugin and become the same samples as their copies, whatever the worker count."""
    src = tmp_path / "in"
    for ts, tag in ((JPEGLosslessSV1, "jpegll"), (JPEG2000Lossless, "j2k")):
        ds = make_dataset(phantom(48, 40, seed=7, bits=12), bits_stored=12)
        write_dicom(ds, src / f"{tag}_GDCM.dcm", ts)
        ds2 = make_dataset(phantom(48, 40, seed=7, bits=12), bits_stored=12)
        write_dicom(ds2, src / f"{tag}_plain.dcm", ts)
    rows, records = _run(src, tmp_path / "out", workers, 8, hostile)
    assert not records and len(rows) == 4
    for tag in ("jpegll", "j2k"):
        assert rows[f"{tag}_GDCM.dcm"]["pixel_hash"] == rows[f"{tag}_plain.dcm"]["pixel_hash"]


def test_after_a_crash_the_unit_is_decoded_with_the_same_plugins(tmp_path):
    """Item 9: the inputs of a unit rerun after a worker crash are decoded with the same plugin preference
    as the rest of the run, not with that of a lone worker."""
    src = tmp_path / "in"
    for i in range(6):
        write_dicom(make_dataset(phantom(48, 40, seed=i), bits_stored=12), src / f"u{i}.dcm", JPEG2000Lossless)
    write_dicom(make_dataset(phantom(48, 40, seed=9), bits_stored=12), src / "u1_ABORT.dcm", JPEG2000Lossless)
    _, records = _run(src, tmp_path / "out", 2, 4, first_plugin)  # units: u0 u1 u1_ABORT u2 | u3 u4 u5
    assert records["u1_ABORT.dcm"]["reason"] == "the decoder crashed on this input"
    tried = {p: r["detail"] for p, r in records.items() if p != "u1_ABORT.dcm"}
    assert len(tried) == 6 and len(set(tried.values())) == 1, tried  # crashed unit and clean unit alike
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "u0.dcm").write_bytes((src / "u0.dcm").read_bytes())
    _, clean = _run(tmp_path / "clean", tmp_path / "out_clean", 2, 4, first_plugin)
    assert clean["u0.dcm"]["detail"] == tried["u0.dcm"]
