"""Planted markers in every identifying DICOM tag appear in no output file and not in the logs."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

import cxrjepa
from tests.dicom_files import make_dataset, phantom, write_dicom

MARK = "QXZMARK"  # never produced by chance in pixels, hashes or numbers
DATE = "19230417"
UID_ROOT = "1.2.826.0.1.3680043.8.498.9191"

PHI_TAGS = {
    # PS3.15 basic profile identifiers, free text, dates and UIDs
    "PatientName": f"{MARK}NAME^PAT",
    "PatientID": f"{MARK}PID",
    "OtherPatientIDs": f"{MARK}OPID",
    "PatientBirthDate": DATE,
    "PatientAddress": f"{MARK}ADDRESS",
    "PatientTelephoneNumbers": f"{MARK}PHONE",
    "AccessionNumber": f"{MARK}ACC",
    "InstitutionName": f"{MARK}INSTITUTION",
    "InstitutionAddress": f"{MARK}INSTADDR",
    "ReferringPhysicianName": f"{MARK}REF^DOC",
    "PerformingPhysicianName": f"{MARK}PERF^DOC",
    "OperatorsName": f"{MARK}OPER",
    "StationName": f"{MARK}STATION",
    "DeviceSerialNumber": f"{MARK}SERIAL",
    "StudyID": f"{MARK}SID",
    "StudyDescription": f"{MARK} study description",
    "SeriesDescription": f"{MARK} series description",
    "ImageComments": f"{MARK} comments",
    "AdditionalPatientHistory": f"{MARK} history",
    "StudyDate": DATE,
    "SeriesDate": DATE,
    "AcquisitionDateTime": DATE + "101010",
    "StudyInstanceUID": UID_ROOT + ".1",
    "SeriesInstanceUID": UID_ROOT + ".2",
    "FrameOfReferenceUID": UID_ROOT + ".3",
    # the table keeps these coded values only when they are codes (CS): free text must be dropped
    "BodyPartExamined": f"{MARK} chest, Dr. Who's patient",
    "ViewPosition": f"{MARK} free text",
}


@contextlib.contextmanager
def _ignore_validation():
    old = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_config.settings.writing_validation_mode = old


def planted(i: int, **kw) -> Dataset:
    ds = make_dataset(phantom(32, 32, seed=i), bits_stored=12, sop_uid=f"{UID_ROOT}.100.{i}", **kw)
    with _ignore_validation():
        for k, v in PHI_TAGS.items():
            setattr(ds, k, v)
    return ds


def markers() -> list[str]:
    uid_digits = UID_ROOT.split(".", 3)[-1]  # "3680043.8.498.9191": any fragment of the planted UIDs
    return [MARK, DATE, "1923-04-17", uid_digits]


def test_no_planted_marker_reaches_outputs_or_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRJEPA_SALT", "phi-test-salt-0123456789")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    src = tmp_path / "in"
    us = make_dataset(
        phantom(40, 48, bits=8, frames=5, seed=3).astype(np.uint8),
        modality="US",
        frame_time_ms=50,
        sop_uid=f"{UID_ROOT}.200",
    )
    with _ignore_validation():
        for k, v in PHI_TAGS.items():
            setattr(us, k, v)
        write_dicom(us, src / "cine.dcm")
        for name, ds in (
            ("ok.dcm", planted(0)),
            ("mono1.dcm", planted(1, photometric="MONOCHROME1", window=(2000, 3000))),
            ("dup_sop.dcm", planted(2)),
            ("dup_sop_again.dcm", planted(2)),
        ):
            write_dicom(ds, src / name)
    # broken files carrying the markers: their errors must not quote values
    data = (src / "ok.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(data[: len(data) - 500])
    bad = planted(4)
    bad.WindowCenter, bad.WindowWidth = "1234.5678", 100  # patched below into values that are not numbers
    bad.PixelSpacing = ["0.123456", 1]
    bad.PatientAge = "077Y"
    write_dicom(bad, src / "bad_values.dcm")
    raw = (src / "bad_values.dcm").read_bytes()
    for good, evil in ((b"1234.5678 ", b"QXZMARK.1 "), (b"0.123456", b"QXZMARK8"), (b"077Y", b"QXZM")):
        assert good in raw
        raw = raw.replace(good, evil)
    (src / "bad_values.dcm").write_bytes(raw)
    nopix = planted(5)
    del nopix.PixelData
    sr = planted(6)
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    with _ignore_validation():
        write_dicom(nopix, src / "nopix.dcm")
        write_dicom(sr, src / "report.dcm")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"sop_uid": [f"{UID_ROOT}.100.0", f"{UID_ROOT}.100.1"], "finding": [1, 0]}).to_csv(labels, index=False)

    out = tmp_path / "ds"
    # a real process, so the workers' own stderr is captured too
    env = {**os.environ, "PYTHONPATH": str(Path(cxrjepa.__file__).parent.parent)}
    res = subprocess.run(
        [
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
            "2",
            "--verbose",
            "--labels",
            str(labels),
            "--key",
            "sop_uid",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 3, res.stderr  # the truncated file is rejected
    logs = res.stdout + res.stderr
    assert "samples" in res.stdout

    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "metadata.parquet" for p in files) and any(p.name == "failures.jsonl" for p in files)
    texts = {"logs": logs}
    for p in files:
        texts[str(p)] = p.read_bytes().decode("latin-1")
    meta = pd.read_parquet(out / "metadata.parquet")
    texts["metadata as text"] = meta.to_csv()
    for col in meta.columns:
        assert not meta[col].astype(str).str.contains(MARK).any(), col
    assert meta["finding"].notna().sum() == 2  # the sop_uid join worked without storing a UID
    for where, text in texts.items():
        for m in markers():
            assert m not in text, f"marker {m!r} found in {where}"
    # the coded columns kept only codes
    assert set(meta["view"]) <= {""} and set(meta["body_part"]) <= {""}
    assert (meta["age"].dropna() > 100).sum() == 0
    # hashed keys are hex, never raw values
    for col in ("sample_id", "patient_key", "study_key"):
        assert all(re.fullmatch(r"[0-9a-f]{16}", v) for v in meta[col]), col
