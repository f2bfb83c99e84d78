"""A seeded corpus of hostile inputs for ``cxrjepa ingest``, built from the DICOM files pydicom ships.

``build(root, n, seed)`` writes ``n`` entries under ``root``: DICOM files taken from pydicom's bundled test
files (never downloaded) and mutated the way broken and hostile archives are (byte flips, truncations, a
wrong transfer syntax, headers that disagree with the pixel data, size claims no image has, NaN / odd
LUTs, deeply nested sequences), a few non-DICOM ones (random bytes, an empty file, a PNG claiming 100000 x
100000 pixels, a text sidecar) and two entries that are not regular files (a FIFO and a dangling link).

Every DICOM file carries planted identifying values (PatientName, PatientID, birth date, institution,
accession number, referring physician, study description, address, and one in a nested sequence) that
contain :data:`MARKER`: none may reach any output. The same ``(n, seed)`` always gives the same corpus.
Used by ``tests/integration/test_ingest_fuzz.py`` (about 100 cases) and ``benchmarks/fuzz_ingest.py`` (1000).
"""

from __future__ import annotations

import io
import os
import random
import struct
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import config as pydicom_config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

#: every planted identifying value contains this (and :data:`BIRTH_DATE`): search outputs for it
MARKER = "QZVX"
BIRTH_DATE = "18870704"

#: pydicom's bundled image files the corpus starts from (every common transfer syntax, colour, multi-frame)
SEED_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle_16bit.dcm",
    "examples_ybr_color.dcm",
    "examples_palette.dcm",
    "image_dfl.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "SC_rgb_small_odd.dcm",
    "examples_jpeg2k.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "SC_rgb_rle_2frame.dcm",
    "ExplVR_BigEnd.dcm",
    "693_J2KI.dcm",
    "SC_rgb_gdcm_KY.dcm",
)

#: DICOM mutations and how often each is drawn
KINDS = {
    "valid": 10,
    "flip": 14,
    "truncate": 10,
    "syntax": 10,
    "header": 14,
    "size": 10,
    "lut": 10,
    "deep": 5,
    "flip+header": 7,
}
SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.3.4.5.6.7",
)
SIZE_CLAIMS = ((65535, 65535), (60000, 60000), (30000, 30000), (8193, 8193), (4096, 4096), (1, 65535), (0, 0), (2, 2))
NUMBERS = ("NaN", "inf", "-inf", "1e38", "-1e38", "0", "-5", "1e-45", "nan", "")


@dataclass
class Corpus:
    root: Path
    files: list[Path] = field(default_factory=list)  # every entry written (FIFO and dangling link included)
    kinds: Counter = field(default_factory=Counter)


def _seed_datasets() -> list[tuple[str, bytes]]:
    out = []
    for name in SEED_FILES:
        path = get_testdata_file(name, download=False)
        if path is not None:
            out.append((name, Path(path).read_bytes()))
    if not out:
        raise RuntimeError("pydicom ships none of the seed files")
    return out


def _plant(ds: Dataset, case: int) -> None:
    """Identifying values, each containing MARKER, at the top level and in a nested sequence."""
    ds.PatientName = f"{MARKER}^NAME{case}"
    ds.PatientID = f"{MARKER}PID{case}"
    ds.PatientBirthDate = BIRTH_DATE
    ds.InstitutionName = f"{MARKER} HOSPITAL {case}"
    ds.AccessionNumber = f"{MARKER}A{case}"[:16]
    ds.ReferringPhysicianName = f"{MARKER}^DOC{case}"
    ds.StudyDescription = f"{MARKER} STUDY {case}"
    ds.PatientAddress = f"{case} {MARKER} STREET"
    item = Dataset()
    item.AccessionNumber = f"{MARKER}R{case}"[:16]
    item.RequestedProcedureDescription = f"{MARKER} REQUEST {case}"
    ds.RequestAttributesSequence = Sequence([item])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[MARKER, str(case)])


def _serialize(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _split(data: bytes) -> tuple[bytes, bytes] | None:
    """(preamble + 'DICM' + file meta, the rest) of a DICOM file with a file meta group length."""
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        return None
    (length,) = struct.unpack("<I", data[140:144])
    end = 144 + length
    return data[:end], data[end:]


def _with_syntax(data: bytes, uid: str) -> bytes:
    """The same bytes with another transfer syntax in the file meta (the data set is not re-encoded)."""
    parts = _split(data)
    if parts is None:
        return data
    new = FileMetaDataset(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True).file_meta)
    new.TransferSyntaxUID = uid
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, new, enforce_standard=True)
    return data[:128] + b"DICM" + fp.getvalue() + parts[1]


def _deep_sequence(depth: int, implicit: bool, case: int) -> bytes:
    """``depth`` nested ReferencedImageSequence items (undefined lengths), with a name planted innermost."""
    tag = struct.pack("<HH", 0x0008, 0x1140)
    head = tag + (b"\xff\xff\xff\xff" if implicit else b"SQ\x00\x00\xff\xff\xff\xff")
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    name = f"{MARKER}^DEEP{case}".encode()
    name += b" " * (len(name) % 2)
    length = struct.pack("<I", len(name)) if implicit else b"PN" + struct.pack("<H", len(name))
    inner = struct.pack("<HH", 0x0010, 0x0010) + length + name
    tail = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (head + item) * depth + inner + tail * depth


def _flip(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 2, 5, 20, 100))):
        i = rng.randrange(132, len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _header(ds: Dataset, rng: random.Random) -> None:
    """Pixel attributes that disagree with the pixel data."""
    rows, cols = int(ds.get("Rows") or 64), int(ds.get("Columns") or 64)
    choice = rng.randrange(9)
    if choice == 0:
        ds.Columns = max(1, cols + rng.choice((-1, 1, -7, 3)))
    elif choice == 1:
        ds.Rows = max(1, rows + rng.choice((-1, 1, 5, -3)))
    elif choice == 2:
        ds.Rows, ds.Columns = cols, rows
    elif choice == 3:
        ds.BitsAllocated = rng.choice((8, 16, 32, 12, 1, 0))
    elif choice == 4:
        ds.SamplesPerPixel = rng.choice((1, 3, 4, 0, 7))
    elif choice == 5:
        ds.NumberOfFrames = rng.choice((0, 2, 7, 1000000, 2147483647))
    elif choice == 6:
        ds.BitsStored, ds.HighBit = rng.choice(((40, 39), (0, 0), (16, 3)))
    elif choice == 7:
        ds.PhotometricInterpretation = rng.choice(("PALETTE COLOR", "YBR_FULL_422", "MONOCHROME1", "RGB", "XYZ"))
    else:
        ds.PixelRepresentation = rng.choice((1, 0, 7))


def _lut(ds: Dataset, rng: random.Random) -> None:
    """NaN, infinite and odd rescale, window and LUT values."""
    choice = rng.randrange(5)
    if choice == 0:
        ds.RescaleSlope, ds.RescaleIntercept = rng.choice(NUMBERS), rng.choice(NUMBERS)
    elif choice == 1:
        ds.WindowCenter, ds.WindowWidth = rng.choice(NUMBERS), rng.choice(NUMBERS)
    elif choice == 2:
        item = Dataset()
        item.add_new(
            0x00283002, "SS", [rng.choice((0, 1, 4096, 32767)), rng.choice((0, -5, 4464)), rng.choice((8, 16, 0, 40))]
        )
        item.add_new(0x00283006, "US", [rng.randrange(65536) for _ in range(rng.choice((0, 3, 256)))])
        ds.VOILUTSequence = Sequence([item])
    elif choice == 3:
        item = Dataset()
        item.add_new(0x00283002, "US", [rng.choice((0, 2, 4096)), 0, rng.choice((8, 16, 0))])
        item.ModalityLUTType = "HU"
        item.add_new(0x00283006, "US", [rng.randrange(65536) for _ in range(rng.choice((0, 2, 16)))])
        ds.ModalityLUTSequence = Sequence([item])
    else:
        ds.VOILUTFunction = rng.choice(("SIGMOID", "LINEAR_EXACT", "BOGUS"))
        ds.WindowCenter, ds.WindowWidth = rng.choice(NUMBERS), rng.choice(NUMBERS)


def _png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose header claims ``width`` x ``height`` pixels (IHDR checksum fixed)."""
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.arange(64, dtype=np.uint8).reshape(8, 8))
    b = bytearray(png.tobytes())
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    return bytes(b)


def _dicom_case(seed_name: str, seed_bytes: bytes, kind: str, case: int, rng: random.Random) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(seed_bytes), force=True)
    _plant(ds, case)
    if kind in ("header", "flip+header"):
        _header(ds, rng)
    elif kind == "size":
        ds.Rows, ds.Columns = rng.choice(SIZE_CLAIMS)
    elif kind == "lut":
        _lut(ds, rng)
    data = _serialize(ds)
    if kind in ("flip", "flip+header"):
        data = _flip(data, rng)
    elif kind == "truncate":
        data = data[: rng.randrange(132, len(data))]
    elif kind == "syntax":
        data = _with_syntax(data, rng.choice(SYNTAXES))
    elif kind == "deep":
        parts = _split(data)
        ts = str(ds.file_meta.TransferSyntaxUID)
        if parts is not None and ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
            depth = rng.choice((64, 500, 5000, 50000))
            data = parts[0] + _deep_sequence(depth, ts == "1.2.840.10008.1.2", case) + parts[1]
    return data


def build(root: str | Path, n: int = 100, seed: int = 0) -> Corpus:
    """Write ``n`` entries (the last few are the non-DICOM ones) under ``root``; see the module docstring."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root)
    rng = random.Random(seed)
    seeds = _seed_datasets()
    extras = ["garbage", "empty", "png_bomb", "sidecar", "fifo", "dangling"]
    kinds, weights = list(KINDS), list(KINDS.values())
    old_read, old_write = (
        pydicom_config.settings.reading_validation_mode,
        pydicom_config.settings.writing_validation_mode,
    )
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for case in range(n):
                extra = extras[case - (n - len(extras))] if case >= n - len(extras) else None
                kind = extra or rng.choices(kinds, weights)[0]
                sub = root / f"batch{case // 50:02d}"
                sub.mkdir(exist_ok=True)
                if extra is None:
                    seed_name, seed_bytes = seeds[rng.randrange(len(seeds))]
                    path = sub / f"case{case:04d}_{kind}_{seed_name}"
                    try:
                        path.write_bytes(_dicom_case(seed_name, seed_bytes, kind, case, rng))
                    except Exception:  # pydicom refused to write this mutation: keep the planted original
                        kind = "valid"
                        path.write_bytes(_dicom_case(seed_name, seed_bytes, kind, case, rng))
                else:
                    path = sub / (f"case{case:04d}_{kind}" + {"sidecar": ".txt", "png_bomb": ".png"}.get(kind, ".dcm"))
                    if kind == "garbage":
                        path.write_bytes(rng.randbytes(rng.randrange(10, 5000)))
                    elif kind == "empty":
                        path.write_bytes(b"")
                    elif kind == "png_bomb":
                        path.write_bytes(_png_claiming(100000, 100000))
                    elif kind == "sidecar":
                        path.write_text("reading notes, not an image\n")
                    elif kind == "fifo":
                        os.mkfifo(path)
                    else:
                        os.symlink(f"missing{case}.dcm", path)
                corpus.files.append(path)
                corpus.kinds[kind] += 1
    finally:
        pydicom_config.settings.reading_validation_mode = old_read
        pydicom_config.settings.writing_validation_mode = old_write
    return corpus


# ---------------------------------------------------------------- checking a run over a corpus


@dataclass
class Run:
    """A finished command: exit code, output, wall time and the peak memory of its whole process tree."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss: int  # bytes, summed over the process and all its descendants, polled every 20 ms


def run_measured(cmd: list[str], env: dict | None = None, timeout: float = 1200.0) -> Run:
    """Run ``cmd``, polling the resident memory of it and every descendant (fork server, workers)."""
    import subprocess
    import threading
    import time

    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    streams: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda k=k, s=s: streams.__setitem__(k, s.read()))
        for k, s in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for t in readers:
        t.start()
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        if time.perf_counter() - start > timeout:
            proc.kill()
            break
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.02)
    proc.wait()
    for t in readers:
        t.join()
    return Run(
        proc.returncode,
        streams["out"].decode(errors="replace"),
        streams["err"].decode(errors="replace"),
        time.perf_counter() - start,
        peak,
    )


def accounting(corpus: Corpus, out: Path) -> tuple[dict, list[str]]:
    """The manifest's counts set beside the corpus and the ledger; returns (figures, problems found).

    Every entry must be exactly one sample or one ledger row; samples + rejected + skipped + duplicates =
    inputs; inputs + ignored = entries written; ledger rows by status = the manifest's counts."""
    import json

    import pandas as pd
    import yaml

    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    c = manifest["counts"]
    ledger = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    meta = pd.read_parquet(out / "metadata.parquet")
    status = Counter(r["status"] for r in ledger)
    written = {p.relative_to(corpus.root).as_posix() for p in corpus.files}
    seen = Counter([*meta["source_path"], *(r["path"] for r in ledger)])
    figures = {
        "entries": len(corpus.files),
        "inputs": c["inputs"],
        "samples": c["samples"],
        "rejected": c["rejected"],
        "skipped": c["skipped"],
        "duplicates": c["duplicates"],
        "ignored": c["ignored"],
        "ledger_rows": len(ledger),
    }
    problems = []
    if c["inputs"] + c["ignored"] != len(corpus.files):
        problems.append(f"inputs {c['inputs']} + ignored {c['ignored']} != {len(corpus.files)} entries written")
    if c["samples"] + c["rejected"] + c["skipped"] + c["duplicates"] != c["inputs"]:
        problems.append("samples + rejected + skipped + duplicates != inputs")
    if len(meta) != c["samples"]:
        problems.append(f"{len(meta)} metadata rows for {c['samples']} samples")
    for key, st in (
        ("rejected", "rejected"),
        ("skipped", "skipped"),
        ("duplicates", "duplicate"),
        ("ignored", "ignored"),
    ):
        if status.get(st, 0) != c[key]:
            problems.append(f"{status.get(st, 0)} {st} ledger rows, manifest says {c[key]}")
    if set(seen) != written:
        problems.append(f"not accounted: {sorted(written - set(seen))[:5]}; unknown: {sorted(set(seen) - written)[:5]}")
    if any(n > 1 for n in seen.values()):
        problems.append(f"accounted twice: {[p for p, n in seen.items() if n > 1][:5]}")
    return figures, problems


def leaks(out: Path, *texts: str) -> list[str]:
    """Where a planted identifying value shows up: any file under ``out`` (raw bytes, and the metadata table's
    decoded values), or any of ``texts`` (stdout, stderr)."""
    import pandas as pd

    needles = (MARKER.encode(), BIRTH_DATE.encode())
    found = [
        str(p.relative_to(out))
        for p in sorted(out.rglob("*"))
        if p.is_file() and any(n in p.read_bytes() for n in needles)
    ]
    meta = pd.read_parquet(out / "metadata.parquet")
    if meta.astype(str).apply(lambda col: col.str.contains(MARKER) | col.str.contains(BIRTH_DATE)).to_numpy().any():
        found.append("metadata.parquet (decoded values)")
    found += [f"output text {i}" for i, t in enumerate(texts) if MARKER in t or BIRTH_DATE in t]
    return found
