"""Hostile inputs through ``cxrjepa ingest``: each of issue 16's items 1-7 reproduced as reported, plus
ignored files in the ledger (issue 13). Every entry becomes a sample or a ledger row with a reason, and the
run goes on. Runs that could hang or that need their own process tree run as a subprocess."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from typer.testing import CliRunner

import cxrjepa
from cxrjepa.cli.app import app
from cxrjepa.data.store import DatasetArtifact
from tests.dicom_files import make_dataset, phantom, write_dicom
from tests.fuzz_corpus import run_measured


@pytest.fixture(autouse=True)
def _salt(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRJEPA_SALT", "hostile-salt-0123456789")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))


def _env(tmp: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(Path(cxrjepa.__file__).parent.parent),
        "CXRJEPA_SALT": "hostile-salt-0123456789",
        "XDG_CONFIG_HOME": str(tmp / "cfg"),
    }


def ingest(tmp: Path, *sources, workers: int = 1, extra=(), isolated: bool = False, preexec_fn=None):
    """Run ``cxrjepa ingest`` into ``tmp/out``: (exit code, stdout, stderr, ledger rows by path, sample paths).

    ``isolated`` runs it as a subprocess (a hang fails the test by timeout instead of stopping it)."""
    out = tmp / "out"
    args = [
        "ingest",
        *map(str, sources),
        "--out",
        str(out),
        "--size",
        "32",
        "--workers",
        str(workers),
        "--force",
        *map(str, extra),
    ]
    if isolated:
        res = subprocess.run(
            [sys.executable, "-m", "cxrjepa", *args],
            env=_env(tmp),
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=preexec_fn,
        )
        code, stdout, stderr = res.returncode, res.stdout, res.stderr
    else:
        res = CliRunner().invoke(app, args)
        code, stdout, stderr = res.exit_code, res.stdout, res.stderr
    if code not in (0, 3):
        return code, stdout, stderr, {}, []
    ledger = {r["path"]: r for r in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    return code, stdout, stderr, ledger, sorted(DatasetArtifact.open(out).meta["source_path"])


def good(folder: Path, n: int = 2) -> list[str]:
    for i in range(n):
        write_dicom(make_dataset(phantom(40, 36, seed=i), bits_stored=12), folder / f"good{i}.dcm")
    return [f"good{i}.dcm" for i in range(n)]


def _no_traceback(stdout: str, stderr: str) -> None:
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr[-2000:]


def rle_panic_file(path: Path) -> Path:
    """Item 1's file: 16x16 16-bit RLE Lossless whose first segment holds 3 copies of ``\\x81\\x00`` (384
    bytes decoded, 256 expected); pylibjpeg-rle answers with a Rust panic (a BaseException)."""
    ds = make_dataset(phantom(16, 16, seed=1, bits=16), bits_stored=16)
    write_dicom(ds, path, RLELossless)
    ds = pydicom.dcmread(path)
    first, second = b"\x81\x00" * 3, b"\x81\x00" * 2
    header = np.array([2, 64, 64 + len(first)] + [0] * 13, "<u4").tobytes()
    ds.PixelData = encapsulate([header + first + second])
    ds.save_as(path)
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_item1_a_decoder_panic_is_a_ledger_row(tmp_path, workers):
    src = tmp_path / "in"
    names = good(src)
    rle_panic_file(src / "panic.dcm")
    code, stdout, stderr, ledger, samples = ingest(tmp_path, src, workers=workers)
    assert code == 3, stderr[-2000:]
    _no_traceback(stdout, stderr)
    assert samples == names
    assert ledger["panic.dcm"]["status"] == "rejected" and ledger["panic.dcm"]["reason"] != "internal error"


def test_item1_the_panic_is_real():
    """The file above does make pylibjpeg-rle raise a BaseException that is not an Exception."""
    rle_utils = pytest.importorskip("rle.utils")
    seg = b"\x81\x00" * 3 + b"\x81\x00" * 2
    frame = np.array([2, 64, 70] + [0] * 13, "<u4").tobytes() + seg
    with pytest.raises(BaseException) as info:
        rle_utils.decode_frame(frame, 256, 16, "<")
    assert not isinstance(info.value, Exception)


def test_item2_a_gdcm_abort_claim_is_refused_with_one_worker(tmp_path):
    """JPEGLSNearLossless_08.dcm re-tagged Rows = Columns = 60000 made gdcm abort the CLI (exit 134)."""
    src = tmp_path / "in"
    names = good(src)
    base = get_testdata_file("JPEGLSNearLossless_08.dcm", download=False)
    if base is None:
        pytest.skip("pydicom's test files are not installed")
    for name, size in (("abort.dcm", 60000), ("mismatch.dcm", 300)):
        ds = pydicom.dcmread(base)
        ds.Rows = ds.Columns = size
        ds.save_as(src / name)
    code, stdout, stderr, ledger, samples = ingest(tmp_path, src, workers=1)
    assert code == 3, stderr[-2000:]
    _no_traceback(stdout, stderr)
    assert samples == names
    assert (ledger["abort.dcm"]["reason"], ledger["abort.dcm"]["detail"]) == (
        "image larger than max_pixels",
        "60000 x 60000",
    )
    assert ledger["mismatch.dcm"]["reason"] == "header does not match the pixel data"
    assert ledger["mismatch.dcm"]["detail"] == "codestream 45 x 10 x 1, header 300 x 300 x 1"


def test_item3_size_claims_are_refused_before_decoding(tmp_path):
    """MR_small_RLE.dcm (9 KB) claiming 65535 x 65535 reached 8.6 GB RSS; claims below max_pixels that the
    RLE segments cannot hold are refused too; max_pixels is a setting."""
    src = tmp_path / "in"
    names = good(src)
    base = get_testdata_file("MR_small_RLE.dcm", download=False)
    if base is None:
        pytest.skip("pydicom's test files are not installed")
    for name, size in (("bomb.dcm", 65535), ("claim.dcm", 4096)):
        ds = pydicom.dcmread(base)
        ds.Rows = ds.Columns = size
        ds.save_as(src / name)
    env = _env(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "cxrjepa",
        "ingest",
        str(src),
        "--out",
        str(tmp_path / "out"),
        "--size",
        "32",
        "--workers",
        "1",
    ]
    run = run_measured(cmd, env, timeout=300)
    assert run.returncode == 3, run.stderr[-2000:]
    assert run.peak_rss < 1.5 * 2**30  # the whole process tree
    ledger = {r["path"]: r for r in map(json.loads, (tmp_path / "out" / "failures.jsonl").read_text().splitlines())}
    assert ledger["bomb.dcm"]["reason"] == "image larger than max_pixels"
    assert ledger["claim.dcm"]["reason"] == "header does not match the pixel data"
    assert ledger["claim.dcm"]["detail"] == "an RLE segment cannot hold 4096 x 4096 pixels"
    # a lower limit refuses ordinary images too (40 x 36 = 1440 pixels)
    *_, ledger, samples = ingest(tmp_path, src, extra=["--set", "max_pixels=1000"])
    assert samples == [] and ledger["good0.dcm"]["reason"] == "image larger than max_pixels"
    assert names


def test_item4_fifos_and_sockets_are_ledgered_never_opened(tmp_path):
    src = tmp_path / "in"
    names = good(src)
    os.mkfifo(src / "pipe.dcm")  # opening it would wait forever for a writer
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.dcm"))
    os.mkfifo(tmp_path / "alone.fifo")
    (tmp_path / "list.txt").write_text("alone.fifo\n")
    try:
        code, _, stderr, ledger, samples = ingest(tmp_path, src, f"@{tmp_path / 'list.txt'}", isolated=True)
    finally:
        sock.close()
    assert code == 0, stderr[-2000:]  # skips are not rejections
    assert samples == names
    for path, kind in (("pipe.dcm", "FIFO"), ("sock.dcm", "socket"), ("alone.fifo", "FIFO")):
        assert (ledger[path]["status"], ledger[path]["reason"], ledger[path]["detail"]) == (
            "skipped",
            "not a regular file",
            kind,
        )


def test_item5_non_utf8_file_names_are_ingested(tmp_path):
    src = tmp_path / "in"
    good(src, 1)
    latin1 = os.fsdecode(os.fsencode(str(src)) + b"/caf\xe9.dcm")  # 'café' in Latin-1: not UTF-8
    write_dicom(make_dataset(phantom(40, 36, seed=5), bits_stored=12), Path(latin1))
    folder = os.fsdecode(os.fsencode(str(src)) + b"/\xff\xfe")
    os.mkdir(folder)
    write_dicom(make_dataset(phantom(40, 36, seed=6), bits_stored=12), Path(folder) / "x.dcm")
    video = cv2.VideoWriter(str(src / "tmp.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(12):  # OpenCV itself crashes on a name that is not UTF-8: it is opened through a link
        video.write(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    video.release()
    os.rename(src / "tmp.mp4", os.fsdecode(os.fsencode(str(src)) + b"/clip\xe9.mp4"))
    code, _, stderr, ledger, samples = ingest(tmp_path, src)
    assert code == 0, stderr[-2000:]
    assert samples == ["\\xff\\xfe/x.dcm", "caf\\xe9.dcm", "clip\\xe9.mp4", "good0.dcm"]  # the bytes, as \xNN
    assert not ledger


def _drop_file_permission_bypass() -> None:
    """In the child, before exec: a root process loses the capabilities that let it read any file."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl")


def test_item6_unreadable_dangling_and_looping_entries_are_ledgered(tmp_path):
    src = tmp_path / "in"
    names = good(src)
    locked = src / "locked"
    good(locked, 1)
    write_dicom(make_dataset(phantom(40, 36, seed=3), bits_stored=12), src / "noread.dcm")
    os.symlink("nowhere.dcm", src / "dangling.dcm")
    os.symlink("loop_b.dcm", src / "loop_a.dcm")
    os.symlink("loop_a.dcm", src / "loop_b.dcm")
    os.symlink("locked", src / "linked_folder")
    locked.chmod(0)
    (src / "noread.dcm").chmod(0)
    preexec = _drop_file_permission_bypass if os.geteuid() == 0 else None
    try:
        code, _, stderr, ledger, samples = ingest(tmp_path, src, isolated=True, preexec_fn=preexec)
    except subprocess.SubprocessError:
        pytest.skip("cannot drop root's file-permission bypass here")
    finally:
        locked.chmod(0o755)
    assert code == 3, stderr[-2000:]
    assert samples == names
    expected = {
        "locked/": ("rejected", "unreadable folder", "Permission denied"),
        "noread.dcm": ("rejected", "unreadable file", "Permission denied"),
        "dangling.dcm": ("rejected", "unreadable file", "dangling link or missing file"),
        "loop_a.dcm": ("rejected", "unreadable file", "link loop"),
        "loop_b.dcm": ("rejected", "unreadable file", "link loop"),
        "linked_folder": ("skipped", "link to a folder (not followed)", ""),
    }
    assert {p: (r["status"], r["reason"], r.get("detail", "")) for p, r in ledger.items()} == expected


def test_item7_headers_that_disagree_with_the_pixel_data_are_rejected(tmp_path):
    """Native pixel data read with a wrong Rows, Columns, BitsAllocated or SamplesPerPixel gives a sheared
    or cropped image: rejected, whatever the direction of the error; zero padding is not an error."""
    src = tmp_path / "in"
    names = good(src)
    px = phantom(40, 36, seed=9, bits=12)
    cases = {
        "columns_short.dcm": {"Columns": 35},  # sheared: 40 x 35 read from 40 x 36 pixels
        "rows_short.dcm": {"Rows": 39},  # cropped: the last row dropped
        "rows_long.dcm": {"Rows": 41},
        "bits8.dcm": {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7},
        "rgb.dcm": {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "PlanarConfiguration": 0},
    }
    for name, tags in cases.items():
        ds = make_dataset(px, bits_stored=12)
        for k, v in tags.items():
            setattr(ds, k, v)
        write_dicom(ds, src / name, ExplicitVRLittleEndian)
    padded = make_dataset(px, bits_stored=12)
    padded.PixelData = padded.PixelData + b"\x00" * 72  # a writer's zero padding
    write_dicom(padded, src / "padded.dcm", ExplicitVRLittleEndian)
    code, _, stderr, ledger, samples = ingest(tmp_path, src)
    assert code == 3, stderr[-2000:]
    assert samples == sorted([*names, "padded.dcm"])
    for name in cases:
        assert ledger[name]["status"] == "rejected", name
        assert ledger[name]["reason"] in (
            "header does not match the pixel data",
            "pixel data shorter than the header describes (a truncated file?)",
        ), ledger[name]
    assert ledger["rows_long.dcm"]["detail"] == "2880 bytes of pixel data, header implies 2952"


def test_ignored_files_get_ledger_rows(tmp_path):
    """Issue 13: a non-image file met during ingest (notes.txt) is a ledger row with status ignored."""
    src = tmp_path / "in"
    names = good(src)
    (src / "notes.txt").write_text("reading notes\n")
    (src / ".DS_Store").write_bytes(b"\x00\x01")
    (src / "plain_text").write_text("no extension, just text\n")
    code, stdout, _, ledger, samples = ingest(tmp_path, src, extra=["--json"])
    assert code == 0 and samples == names
    assert {p: (r["status"], r["reason"]) for p, r in ledger.items()} == {
        "notes.txt": ("ignored", "sidecar file (not an image)"),
        ".DS_Store": ("ignored", "hidden file or folder"),
        "plain_text": ("ignored", "text file"),
    }
    counts = json.loads(stdout)["counts"]
    assert counts["ignored"] == 3 and counts["inputs"] == 2
    assert counts["ignored_by_reason"] == {"sidecar file (not an image)": 1, "hidden file or folder": 1, "text file": 1}
