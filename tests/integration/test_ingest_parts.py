"""``cxrjepa ingest --part K/N`` + finalize equals one run over the same inputs: same sample ids in the same
order, identical pixels, metadata rows, ledger, manifest counts and fingerprints. Parts run one after another,
two at the same time (real processes), a part killed with SIGKILL and rerun; finalize refuses, naming the
part, while one is missing or made with other settings. The archive holds duplicates whose two copies fall in
different parts (same SOPInstanceUID; same pixels), a broken file, a sidecar and a hidden file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

import cxrjepa
from cxrjepa.core.artifact import read_manifest
from cxrjepa.core.lock import OutputLockedError, output_lock
from cxrjepa.core.parts import Part, PartsIncompleteError, part_dir, part_of
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.ingest.api import run_ingest
from cxrjepa.ingest.config import IngestConfig, IngestOptions
from cxrjepa.ingest.parts import finalize_ingest, run_ingest_part
from tests.dicom_files import make_dataset, phantom, write_dicom

N_PARTS = 3
SALT = "parts-test-salt-0123456789"
SIZE = 32


def _in_another_part(root: Path, rel: str, stem: str) -> str:
    """A file name under ``root`` whose part differs from ``rel``'s (so a duplicate crosses parts)."""
    for j in range(1000):
        cand = f"{stem}{j:03d}.dcm"
        if part_of(cand, N_PARTS) != part_of(rel, N_PARTS) and not (root / cand).exists():
            return cand
    raise AssertionError("no name in another part")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("parts-archive")
    src = root / "src"
    kept = {}
    for i in range(24):
        ds = make_dataset(phantom(40, 36 + i % 5, seed=i, bits=12), bits_stored=12)
        rel = f"s{i % 3}/img{i:03d}.dcm"
        write_dicom(ds, src / rel, (ExplicitVRLittleEndian, RLELossless)[i % 2])
        kept[rel] = ds
    # the same instance (SOPInstanceUID) and the same pixels under another instance, each in another part
    write_dicom(kept["s0/img000.dcm"], src / _in_another_part(src, "s0/img000.dcm", "copies/instance"))
    twin = make_dataset(phantom(40, 37, seed=1, bits=12), bits_stored=12)  # the pixels of s1/img001.dcm
    write_dicom(twin, src / _in_another_part(src, "s1/img001.dcm", "copies/pixels"))
    (src / "s2" / "broken.dcm").write_bytes(b"DICM" * 10)  # rejected
    (src / "s2" / "notes.txt").write_text("a sidecar: ignored\n")
    (src / ".hidden").write_bytes(b"ignored too")
    labels = root / "labels.csv"
    rels = sorted(kept)
    pd.DataFrame(
        {
            "path": rels,
            "patient_id": [f"P{k % 5}" for k in range(len(rels))],
            "finding": [("effusion", "normal")[k % 2] for k in range(len(rels))],
        }
    ).to_csv(labels, index=False)
    return src, labels


@pytest.fixture(autouse=True)
def _salt(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRJEPA_SALT", SALT)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


CONFIG = IngestConfig(size=SIZE)
OPTIONS = IngestOptions(workers=1, unit_size=3)


@pytest.fixture(scope="module")
def reference(archive, tmp_path_factory) -> Path:
    """One run over the whole archive."""
    src, labels = archive
    out = tmp_path_factory.mktemp("reference") / "ds"
    old = os.environ.get("CXRJEPA_SALT")
    os.environ["CXRJEPA_SALT"] = SALT
    try:
        run_ingest(out, CONFIG, sources=[src], labels=labels, options=OPTIONS)
    finally:
        if old is None:
            os.environ.pop("CXRJEPA_SALT")
        else:
            os.environ["CXRJEPA_SALT"] = old
    return out


def assert_same_dataset(got: Path, ref: Path) -> None:
    a, b = DatasetArtifact.open(ref), DatasetArtifact.open(got)
    assert b.meta["sample_id"].tolist() == a.meta["sample_id"].tolist()
    pd.testing.assert_frame_equal(b.meta, a.meta)  # every metadata column, row by row (labels joined)
    assert np.array_equal(np.asarray(b.images[:]), np.asarray(a.images[:]))  # every stored pixel
    assert (got / "failures.jsonl").read_text() == (ref / "failures.jsonl").read_text()  # the same ledger
    ma, mb = read_manifest(ref), read_manifest(got)
    assert mb["counts"] == ma["counts"]
    assert mb["contents"] == ma["contents"]
    assert mb["fingerprint"] == ma["fingerprint"] and mb["content_fingerprint"] == ma["content_fingerprint"]
    assert mb["inputs"] == ma["inputs"] and mb["params"] == ma["params"]
    assert not (got / "parts").exists() and not (got / "staging").exists()


def _env(tmp: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(Path(cxrjepa.__file__).parent.parent),
        "CXRJEPA_SALT": SALT,
        "XDG_CONFIG_HOME": str(tmp / "config"),
    }


def _cmd(src: Path, labels: Path, out: Path, *extra: str, unit_size: int = 3) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cxrjepa",
        "ingest",
        str(src),
        "--out",
        str(out),
        "--labels",
        str(labels),
        "--size",
        str(SIZE),
        "--workers",
        "1",
        "--unit-size",
        str(unit_size),
        "--quiet",
        *extra,
    ]


def test_the_archive_has_duplicates_across_parts(archive, reference):
    """The test data does what it says: the ledger's duplicates and their originals lie in different parts."""
    counts = read_manifest(reference)["counts"]
    assert counts["duplicates"] == 2 and counts["rejected"] == 1 and counts["ignored"] == 2
    failures = pd.read_json(reference / "failures.jsonl", lines=True)
    dups = failures[failures["status"] == "duplicate"]
    assert sorted(dups["reason"]) == ["duplicate instance (same SOPInstanceUID or same file)", "duplicate pixels"]
    for _, row in dups.iterrows():
        assert part_of(row["path"], N_PARTS) != part_of(row["duplicate_of"], N_PARTS)
    assert "finding" in DatasetArtifact.open(reference).meta


def test_three_parts_one_after_another_equal_one_run(archive, reference, tmp_path):
    src, labels = archive
    out = tmp_path / "ds"
    results = [
        run_ingest_part(out, f"{k}/{N_PARTS}", CONFIG, sources=[src], labels=labels, options=OPTIONS)
        for k in range(N_PARTS)
    ]
    assert [r["part_status"] for r in results[:2]] == ["complete", "complete"]  # earlier parts only say so
    assert read_manifest(out)["status"] == "complete"  # the last one to finish finalized
    assert sum(r["part_inputs"] for r in results[:2]) < results[0]["inputs"]  # each did a share
    assert_same_dataset(out, reference)
    assert read_manifest(out)["options"]["parts"] == N_PARTS
    again = run_ingest_part(out, f"1/{N_PARTS}", CONFIG, sources=[src], labels=labels, options=OPTIONS)
    assert again.manifest["finished"] == read_manifest(out)["finished"]  # up to date: nothing redone
    assert finalize_ingest(out).content_fingerprint == again.content_fingerprint


def test_two_parts_at_the_same_time_then_the_last(archive, reference, tmp_path):
    """Parts 0 and 1 as two processes started together on one output folder, then part 2, whose process
    finalizes. Every part exits 0 (rejected inputs are finalize's to report, so 'afterok' holds)."""
    src, labels = archive
    out, env = tmp_path / "ds", _env(tmp_path)
    procs = [
        subprocess.Popen(
            _cmd(src, labels, out, "--part", f"{k}/{N_PARTS}"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert read_manifest(out)["status"] == "partial"
    last = subprocess.run(
        _cmd(src, labels, out, "--part", f"2/{N_PARTS}"), env=env, capture_output=True, text=True, timeout=300
    )
    assert last.returncode == 0, last.stderr
    assert_same_dataset(out, reference)
    fin = subprocess.run(
        [sys.executable, "-m", "cxrjepa", "ingest", "--finalize", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fin.returncode == 3 and "up to date" in fin.stderr  # the dataset rejected an input: exit 3


def test_killed_part_rerun_changes_nothing(archive, reference, tmp_path):
    src, labels = archive
    out, env = tmp_path / "ds", _env(tmp_path)
    part = Part(1, N_PARTS)
    staging = part_dir(out, part) / "staging"
    cmd = _cmd(src, labels, out, "--part", str(part), "--no-auto-finalize", unit_size=1)
    killed_after = None
    for attempt in range(3):  # the kill must land while units remain: retry if the machine was too fast
        proc = subprocess.Popen(
            cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            n = len(list(staging.glob("unit-*.json"))) if staging.is_dir() else 0
            if n >= 2 + attempt:
                os.killpg(proc.pid, signal.SIGKILL)  # the part and its decode workers, like a lost node
                killed_after = n
                break
            time.sleep(0.002)
        proc.wait()
        if killed_after is not None:
            break
        shutil.rmtree(out)
    assert killed_after is not None, "the part finished before it could be killed"
    record = (part_dir(out, part) / "part.json").read_text()
    assert '"status": "running"' in record
    with pytest.raises(PartsIncompleteError, match=f"Parts 0/3, 1/3 and 2/3 of '{out}' are not complete"):
        finalize_ingest(out)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert '"status": "complete"' in (part_dir(out, part) / "part.json").read_text()
    for k in (0, 2):
        run_ingest_part(
            out, f"{k}/{N_PARTS}", CONFIG, sources=[src], labels=labels, options=OPTIONS, auto_finalize=False
        )
    finalize_ingest(out)
    assert_same_dataset(out, reference)


def test_finalize_refuses_a_missing_part_or_one_made_otherwise(archive, reference, tmp_path):
    src, labels = archive
    out, env = tmp_path / "ds", _env(tmp_path)
    for k in (0, 2):
        run_ingest_part(out, f"{k}/{N_PARTS}", CONFIG, sources=[src], labels=labels, options=OPTIONS)
    assert read_manifest(out)["status"] == "partial"  # part 2 was last but part 1 is missing: no finalize

    fin = subprocess.run(
        [sys.executable, "-m", "cxrjepa", "ingest", "--finalize", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fin.returncode == 1
    message = " ".join(fin.stderr.split())
    assert "Part 1/3 of" in message and "1/3 missing" in message and "--array=1 " in message, message

    # a part made with other settings (copied in from another run) is refused, named with what differs
    other = tmp_path / "other"
    run_ingest_part(other, f"1/{N_PARTS}", IngestConfig(size=24), sources=[src], labels=labels, options=OPTIONS)
    shutil.copytree(part_dir(other, Part(1, N_PARTS)), part_dir(out, Part(1, N_PARTS)))
    with pytest.raises(PartsIncompleteError, match=r"1/3 made with other settings \(size\) than the others"):
        finalize_ingest(out)
    # ... and so is running one with other settings in this folder (nothing of the others is lost)
    bad = subprocess.run(
        _cmd(src, labels, out, "--part", f"1/{N_PARTS}", "--size", "24"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "other settings (size)" in " ".join(bad.stderr.split()), bad.stderr

    # while a part runs, finalize waits for it (exit 2, naming it)
    with (
        output_lock(part_dir(out, Part(1, N_PARTS)), "ingest part 1/3"),
        pytest.raises(OutputLockedError, match="part 1/3 .* is still running"),
    ):
        finalize_ingest(out)
    # the right part 1 replaces the odd one; the last part to finish finalizes
    art = run_ingest_part(out, f"1/{N_PARTS}", CONFIG, sources=[src], labels=labels, options=OPTIONS)
    assert art.path == out
    assert_same_dataset(out, reference)


def test_part_numbers_are_checked(archive, tmp_path):
    from typer.testing import CliRunner

    from cxrjepa.cli.app import app

    src, _ = archive
    res = CliRunner().invoke(app, ["ingest", str(src), "--out", str(tmp_path / "x"), "--part", "3/3"])
    assert res.exit_code == 2 and "numbered 0 to 2" in res.stderr and "--array=0-2" in res.stderr
    res = CliRunner().invoke(app, ["ingest", str(src), "--out", str(tmp_path / "x"), "--part", "two"])
    assert res.exit_code == 2 and "K/N" in res.stderr
    res = CliRunner().invoke(app, ["ingest", "--finalize", "--out", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "holds no ingest parts" in res.stderr
    assert not (tmp_path / "x").exists()
