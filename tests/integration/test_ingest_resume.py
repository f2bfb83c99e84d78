"""kill -9 of a multi-worker ingest, then a rerun: the dataset equals an uninterrupted run's (same ids,
same pixels, same ledger, no duplicates, no gaps)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

import cxrjepa
from cxrjepa.data.store import DatasetArtifact
from tests.dicom_files import make_dataset, phantom, write_dicom

N = 80


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    for i in range(N):
        ds = make_dataset(
            phantom(64, 56 + i % 17, seed=i, bits=12), bits_stored=12, photometric="MONOCHROME1" if i % 5 == 0 else None
        )
        ts = (JPEG2000Lossless, RLELossless)[i % 2]
        write_dicom(ds, root / f"s{i % 7}" / f"img{i:04d}.dcm", ts)
        if i % 25 == 0:
            write_dicom(ds, root / "copies" / f"copy{i:04d}.dcm", ts)  # same instance: a duplicate
    (root / "s0" / "broken.dcm").write_bytes(b"DICM" * 10)
    return root


def _cmd(src: Path, out: Path, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cxrjepa",
        "ingest",
        str(src),
        "--out",
        str(out),
        "--size",
        "32",
        "--workers",
        str(workers),
        "--unit-size",
        "4",
        "--quiet",
    ]


def _env(tmp: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(Path(cxrjepa.__file__).parent.parent),
        "CXRJEPA_SALT": "resume-salt-0123456789",
        "XDG_CONFIG_HOME": str(tmp / "cfg"),
    }


def _snapshot(path: Path) -> tuple:
    ds = DatasetArtifact.open(path)
    return (
        ds.meta,
        np.asarray(ds.images[:]),
        (path / "failures.jsonl").read_text(),
        ds.artifact.content_fingerprint,
        ds.artifact.counts,
    )


def test_kill_9_then_resume_equals_uninterrupted(archive, tmp_path):
    env = _env(tmp_path)
    ref_out = tmp_path / "ref"
    done = subprocess.run(_cmd(archive, ref_out, 1), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr  # the broken file

    out = tmp_path / "killed"
    staging = out / "staging"
    killed_after = None
    for attempt in range(3):  # the kill must land while units remain: retry if the machine was too fast
        proc = subprocess.Popen(
            _cmd(archive, out, 2), env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        target = 3 + 2 * attempt
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            n = len(list(staging.glob("unit-*.json"))) if staging.is_dir() else 0
            if n >= target:
                os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers, like a power cut
                killed_after = n
                break
            time.sleep(0.005)
        proc.wait()
        if killed_after is not None:
            break
        subprocess.run(["rm", "-rf", str(out)])
    assert killed_after is not None, "the ingest finished before it could be killed"
    assert "partial" in (out / "manifest.yaml").read_text()
    n_units = -(-(N + N // 25 + 1 + 1) // 4)
    assert killed_after < n_units

    resumed = subprocess.run(_cmd(archive, out, 2), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 3, resumed.stderr
    assert not staging.exists()

    ref, got = _snapshot(ref_out), _snapshot(out)
    assert list(got[0]["sample_id"]) == list(ref[0]["sample_id"])
    assert got[0]["sample_id"].is_unique and len(got[0]) == N
    pd.testing.assert_frame_equal(got[0], ref[0])  # every metadata column, row by row
    assert np.array_equal(got[1], ref[1])  # every stored pixel
    assert got[2] == ref[2]  # the same ledger (the broken file and the duplicates)
    assert got[3] == ref[3]
    assert got[4]["duplicates"] == N // 25 + 1 and got[4]["rejected"] == 1
