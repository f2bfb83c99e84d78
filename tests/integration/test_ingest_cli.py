"""``cxrjepa ingest`` through the CLI: bad inputs never crash the run (exit 3, ledgered), dry run, rerun,
labels, filters and flags."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.data.store import DatasetArtifact
from tests.dicom_files import make_dataset, phantom, write_dicom

runner = CliRunner()


@pytest.fixture(autouse=True)
def _salt(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRJEPA_SALT", "cli-test-salt-abcdef")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def ingest(*args: str):
    return runner.invoke(app, ["ingest", *map(str, args)])


def make_archive(root: Path) -> dict[str, str]:
    """Good files plus one of every kind of broken input; returns {relative path: expected reason}."""
    good = make_dataset(phantom(40, 40, seed=0), bits_stored=12)
    write_dicom(good, root / "good" / "a.dcm")
    write_dicom(make_dataset(phantom(40, 30, seed=1), bits_stored=12), root / "good" / "b_no_extension")
    cv2.imwrite(str(root / "good" / "c.png"), (phantom(30, 40, seed=2, bits=16)).astype(np.uint16))
    ok, png8 = cv2.imencode(".png", phantom(30, 30, seed=3, bits=8).astype(np.uint8))
    (root / "good" / "png_named.dcm").write_bytes(png8.tobytes())  # a PNG wearing a DICOM extension
    (root / "good" / "notes.txt").write_text("sidecar notes, ignored\n")
    bad = root / "bad"
    bad.mkdir()
    data = (root / "good" / "a.dcm").read_bytes()
    (bad / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (bad / "random.dcm").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (bad / "zero.dcm").write_bytes(b"")
    nopix = make_dataset(phantom(20, 20, seed=4), bits_stored=12)
    del nopix.PixelData
    write_dicom(nopix, bad / "nopixels.dcm")
    (bad / "text.png").write_text("this is not an image at all\n")
    png = (root / "good" / "c.png").read_bytes()
    (bad / "truncated.png").write_bytes(png[:60])
    (bad / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    write_dicom(make_dataset(np.full((20, 20), 9, np.uint16), bits_stored=12), bad / "constant.dcm")
    return {
        "bad/truncated.dcm": "pixel data shorter than the header describes (a truncated file?)",
        "bad/random.dcm": "unrecognized format",
        "bad/zero.dcm": "empty file",
        "bad/nopixels.dcm": "no pixel data",
        "bad/text.png": "unreadable image",
        "bad/truncated.png": "unreadable image",
        "bad/broken.mp4": "unreadable video",
        "bad/constant.dcm": "constant image",
    }


def test_bad_inputs_are_ledgered_and_exit_3(tmp_path):
    expected = make_archive(tmp_path / "in")
    out = tmp_path / "ds"
    res = ingest(tmp_path / "in", "--out", out, "--size", 32, "--workers", 2, "--json")
    assert res.exit_code == 3, res.output
    summary = json.loads(res.stdout)
    ledger = {r["path"]: r for r in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    for path, reason in expected.items():
        assert path in ledger, path
        assert ledger[path]["reason"] == reason, (path, ledger[path])
        assert ledger[path]["status"] == "rejected"
    counts = summary["counts"]
    assert counts["rejected"] == len(expected)
    assert counts["samples"] == 4 and counts["ignored"] == 1
    assert counts["inputs"] == counts["samples"] + counts["rejected"] + counts["skipped"] + counts["duplicates"]
    ds = DatasetArtifact.open(out)
    assert sorted(ds.meta["source_path"]) == ["good/a.dcm", "good/b_no_extension", "good/c.png", "good/png_named.dcm"]
    assert ds.images.shape == (4, 32, 32) and ds.images.dtype == np.uint8
    assert list(ds.images.metadata.dimension_names) == ["frame", "y", "x"]
    m = ds.meta.set_index("source_path")
    assert m.loc["good/png_named.dcm", "format"] == "image"  # recognised by content, not extension
    assert m.loc["good/c.png", "bits_stored"] == 16

    # a rerun is a no-op (same fingerprint), still reports the rejections
    res2 = ingest(tmp_path / "in", "--out", out, "--size", 32, "--json")
    assert res2.exit_code == 3
    assert json.loads(res2.stdout)["content_fingerprint"] == summary["content_fingerprint"]
    assert "up to date" in res2.stderr


def test_dry_run_writes_nothing(tmp_path):
    make_archive(tmp_path / "in")
    out = tmp_path / "ds"
    res = ingest(tmp_path / "in", "--out", out, "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert not out.exists()
    # header-only: empty, unrecognized, pixel-less and truncated DICOM inputs are known; decoding problems are not
    assert report["would_reject"] == 4 and report["would_ingest"] == 8 and report["ignored"] == 1
    assert report["by_reason"]["empty file"] == 1 and report["cannot_decode"] == {}
    assert report["by_reason"]["pixel data shorter than the header describes (a truncated file?)"] == 1


def test_labels_policy_filters_and_flags(tmp_path):
    src = tmp_path / "in"
    common = dict(bits_stored=12)
    write_dicom(make_dataset(phantom(32, 32, seed=1), modality="CR", **common), src / "p1" / "cr.dcm")
    write_dicom(
        make_dataset(phantom(32, 32, seed=2), modality="DX", tags={"BurnedInAnnotation": "YES"}, **common),
        src / "p1" / "dx.dcm",
    )
    write_dicom(
        make_dataset(
            phantom(32, 32, seed=3), modality="DX", tags={"PresentationIntentType": "FOR PROCESSING"}, **common
        ),
        src / "p2" / "proc.dcm",
    )
    write_dicom(make_dataset(phantom(32, 32, seed=4), modality="CT", **common), src / "p2" / "ct.dcm")
    dup = make_dataset(phantom(32, 32, seed=5), modality="CR", **common)
    write_dicom(dup, src / "p3" / "first.dcm")
    write_dicom(dup, src / "p3" / "second.dcm")  # same SOPInstanceUID
    labels = tmp_path / "labels.csv"
    pd.DataFrame(
        {
            "file": ["p1/cr.dcm", "p1/dx.dcm", "p3/first.dcm", "missing.dcm"],
            "patient_id": ["PAT-A", "PAT-A", "PAT-B", "PAT-C"],
            "effusion": [1, 0, 1, 0],
            "sex": ["M", "M", "F", "F"],
            "patient_name": ["X", "Y", "Z", "W"],
        }
    ).to_csv(labels, index=False)
    out = tmp_path / "ds"
    res = ingest(
        src,
        "--out",
        out,
        "--size",
        32,
        "--modality",
        "CR,DX",
        "--labels",
        labels,
        "--key",
        "path",
        "--json",
        "--workers",
        1,
    )
    assert res.exit_code == 0, res.output  # skips and duplicates are not rejections
    ds = DatasetArtifact.open(out)
    m = ds.meta.set_index("source_path")
    assert sorted(m.index) == ["p1/cr.dcm", "p1/dx.dcm", "p3/first.dcm"]
    ledger = {r["path"]: r for r in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert ledger["p2/ct.dcm"]["reason"] == "modality not selected"
    assert ledger["p2/proc.dcm"]["reason"].startswith("FOR PROCESSING")
    assert (
        ledger["p3/second.dcm"]["status"] == "duplicate" and ledger["p3/second.dcm"]["duplicate_of"] == "p3/first.dcm"
    )
    assert bool(m.loc["p1/dx.dcm", "burned_in_annotation"]) and not bool(m.loc["p1/cr.dcm", "burned_in_annotation"])
    assert ds.label_columns == ["effusion"]
    assert m.loc["p1/cr.dcm", "effusion"] == 1 and m.loc["p3/first.dcm", "effusion"] == 1
    assert "patient_id" not in ds.meta.columns and "patient_name" not in ds.meta.columns
    assert (
        m.loc["p1/cr.dcm", "patient_key"] == m.loc["p1/dx.dcm", "patient_key"] != m.loc["p3/first.dcm", "patient_key"]
    )
    counts = ds.artifact.counts
    assert counts["labels_unmatched_rows"] == 1 and counts["samples_without_labels"] == 0
    assert counts["labels_rows_of_ledgered_inputs"] == 0
    assert counts["burned_in_annotation"] == 1 and counts["duplicates"] == 1 and counts["skipped"] == 2

    # FOR PROCESSING on request (a new fingerprint: the artifact is redone)
    res = ingest(src, "--out", out, "--size", 32, "--modality", "DX", "--allow-for-processing", "--workers", 1)
    assert res.exit_code == 0, res.output
    m = DatasetArtifact.open(out).meta.set_index("source_path")
    assert sorted(m.index) == ["p1/dx.dcm", "p2/proc.dcm"] and bool(m.loc["p2/proc.dcm", "for_processing"])


def test_usage_errors(tmp_path):
    res = ingest(tmp_path / "nope", "--out", tmp_path / "ds")
    assert res.exit_code == 2 and "does not exist" in res.stderr
    (tmp_path / "in").mkdir()
    res = ingest(tmp_path / "in", "--out", tmp_path / "ds")
    assert res.exit_code == 2 and "No input files" in res.stderr
    res = ingest(tmp_path / "in", "--out", tmp_path / "ds", "--dtype", "float32")
    assert res.exit_code == 2 and "dtype" in res.stderr
    res = ingest(tmp_path / "in", "--out", tmp_path / "ds", "--print-config", "--size", "96")
    assert res.exit_code == 0 and "size: 96" in res.stdout


def test_output_inside_input_and_all_rejected(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "junk.dcm").write_bytes(b"\x00" * 300)
    (src / "empty.png").write_bytes(b"")
    out = src / "ds"  # the output folder lives inside the input folder
    res = ingest(src, "--out", out, "--size", 16, "--json", "--workers", 1)
    assert res.exit_code == 3, res.output
    counts = json.loads(res.stdout)["counts"]
    assert counts["samples"] == 0 and counts["rejected"] == 2 and counts["inputs"] == 2
    ds = DatasetArtifact.open(out)
    assert ds.images.shape == (0, 16, 16) and len(ds.meta) == 0
    res = ingest(src, "--out", out, "--size", 16, "--json", "--workers", 1, "--force")
    assert res.exit_code == 3 and json.loads(res.stdout)["counts"]["inputs"] == 2  # its own files are not inputs
