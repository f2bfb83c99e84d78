"""Identifying columns of a labels CSV (names, IDs, accession numbers, institutions, birth dates, in the many
ways people spell them) reach no output: not through ``cxrjepa ingest --labels``, not through ``cxrjepa probe
--labels`` without ``--label-col`` (where every other column becomes a task), not into the report or a log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

import cxrjepa
from tests.dicom_files import make_dataset, phantom, write_dicom

MARK = "QXZMARK"  # never produced by chance in pixels, hashes or numbers
SITE = "QXZSITE"  # a harmless label column: proves the search finds text wherever it is stored
N = 40


def planted_labels(n: int) -> pd.DataFrame:
    i = np.arange(n)
    patient = i // 2
    return pd.DataFrame(
        {
            "file": [f"img{k:03d}.dcm" for k in i],
            "finding": np.where(patient % 2 == 1, "EFFUSION", "NORMAL"),
            "site": [f"{SITE}{'AB'[k % 2]}" for k in patient],
            "age": 40 + 2 * i,  # up to 118: ages above 89 identify too (ingest keeps the DICOM's own PatientAge)
            "PatientName": [f"{MARK}NAME^PATIENT{k}" for k in patient],
            "PatientID": [f"{MARK}PID{k}" for k in patient],
            "AccessionNumber": [f"{MARK}ACC{k}" for k in i],
            "InstitutionName": f"{MARK}INSTITUTION",
            "PatientBirthDate": "19230417",
            "Patient Name": [f"{MARK}SPACED{k}" for k in patient],
            "patient_id": [f"{MARK}SNAKE{k}" for k in patient],
            "MRN": [f"{MARK}MRN{k}" for k in patient],
            "DOB": "1923-04-17",
            "Referring Physician": f"{MARK}DOCTOR",
            "study_date": "1999-12-31",
            "e-mail": f"{MARK}@example.org",
        }
    )


def markers() -> list[str]:
    return [MARK, "19230417", "1923-04-17", "1999-12-31"]


def _cli(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cxrjepa", *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )


def _texts(folder: Path) -> dict[str, str]:
    """Every file of an artifact as text (bytes as latin-1), and every parquet table decoded as CSV."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file():
            out[str(p)] = p.read_bytes().decode("latin-1")
            if p.suffix == ".parquet":
                out[f"{p} (as a table)"] = pd.read_parquet(p).to_csv()
    return out


def test_planted_identifying_columns_reach_no_output_log_or_report(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(cxrjepa.__file__).parent.parent),
        "CXRJEPA_SALT": "phi-test-salt-0123456789",
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
    }
    src = tmp_path / "dicom"
    for k in range(N):
        write_dicom(make_dataset(phantom(32, 32, seed=k), bits_stored=12), src / f"img{k:03d}.dcm")
    labels = tmp_path / "labels.csv"
    planted_labels(N).to_csv(labels, index=False)
    assert MARK in labels.read_text()

    ds, emb, p_ds, p_csv, report = (tmp_path / n for n in ("ds", "emb", "probe-ds", "probe-csv", "report"))
    runs = [
        _cli("ingest", src, "--out", ds, "--labels", labels, "--size", "32", "--workers", "1", "--verbose", env=env),
        _cli(
            "embed",
            "--encoder",
            "random:tiny/8",
            "--data",
            ds,
            "--out",
            emb,
            "--device",
            "cpu",
            "--workers",
            "0",
            env=env,
        ),
        # the dataset's label columns, as joined at ingest
        _cli(
            "probe", "--embeddings", emb, "--out", p_ds, "--bootstrap", "20", "--fewshot", "none", "--verbose", env=env
        ),
        # the CSV again, straight to the probe, without --label-col: every column that is not identifying is a task
        _cli(
            "probe",
            "--embeddings",
            emb,
            "--out",
            p_csv,
            "--labels",
            labels,
            "--key",
            "file=source_path",
            "--bootstrap",
            "20",
            "--fewshot",
            "none",
            "--verbose",
            "--json",
            env=env,
        ),
        _cli(
            "report",
            p_ds,
            p_csv,
            "--out",
            report,
            "--device",
            "cpu",
            "--set",
            "sample_images=4",
            "--set",
            "patch_images=0",
            "--set",
            "retrieval_queries=1",
            "--set",
            "map_method=pca",
            "--verbose",
            env=env,
        ),
    ]
    for res in runs:
        assert res.returncode == 0, res.stderr[-2000:]

    # what the stages did with the columns
    dataset = yaml.safe_load((ds / "manifest.yaml").read_text())
    assert dataset["contents"]["label_columns"] == ["finding", "site"]  # age fills the table's own column
    probe = yaml.safe_load((p_csv / "manifest.yaml").read_text())
    assert set(probe["contents"]["tasks"]) == {"finding", "site", "age"}
    assert set(probe["contents"]["labels_join"]["identifying_columns_left_out"]) == {
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "InstitutionName",
        "PatientBirthDate",
        "Patient Name",
        "patient_id",
        "MRN",
        "DOB",
        "Referring Physician",
        "study_date",
        "e-mail",
    }
    pred = pd.read_parquet(p_csv / "predictions.parquet")
    assert pred.loc[pred["task"] == "age", "target_value"].max() == 90
    assert set(yaml.safe_load((p_ds / "manifest.yaml").read_text())["contents"]["tasks"]) == {"finding", "site"}

    texts = {f"log of cxrjepa {' '.join(r.args[3:4])}": r.stdout + r.stderr for r in runs}
    for folder in (ds, emb, p_ds, p_csv, report):
        texts.update(_texts(folder))
    assert any(n.endswith(".png") for n in texts) and any(n.endswith("index.html") for n in texts)
    # the search sees stored text wherever it is: the harmless site label is in the tables, metrics and report
    for where in (
        ds / "metadata.parquet",
        p_csv / "metrics.json",
        p_csv / "predictions.parquet",
        report / "index.html",
    ):
        assert any(SITE in t for n, t in texts.items() if n.startswith(str(where))), where
    for where, text in texts.items():
        for m in markers():
            assert m not in text, f"identifying value {m!r} found in {where}"
