"""The demo archive as a whole: manifest, files, labels, masks, transfer syntaxes, patients, determinism, CLI."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import yaml
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.artifact import compute_fingerprint, open_artifact
from cxrjepa.core.config import from_dict
from cxrjepa.demo import DemoConfig, codecs, findings_for, plan_cases, render_case, run_demo, storage_for
from cxrjepa.demo.api import CSV_COLUMNS

SMALL = dict(n=30, seed=3, min_size=96, max_size=180)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    run_demo(out, DemoConfig(**SMALL))
    return out


def _rows(demo: Path) -> list[dict]:
    with open(demo / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _config(demo: Path) -> DemoConfig:
    return from_dict(DemoConfig, open_artifact(demo, "demo").params)


def _cases(demo: Path) -> dict[str, object]:
    return {c.file: c for c in plan_cases(_config(demo))}


def _presented(ds: pydicom.Dataset) -> np.ndarray:
    modality = apply_modality_lut(ds.pixel_array, ds)
    if modality.dtype.kind == "f" and np.array_equal(modality, np.round(modality)):
        modality = modality.astype(np.int64)
    out = apply_voi_lut(modality, ds).astype(np.float64)
    out = -out if ds.PhotometricInterpretation == "MONOCHROME1" else out
    return (out - out.min()) / (out.max() - out.min())


def test_manifest_and_layout(demo):
    art = open_artifact(demo, "demo")
    rows = _rows(demo)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert art.counts["images"] == len(rows) == SMALL["n"]
    assert art.contents["label_columns"] == ["nodule", "effusion"]
    files = sorted(str(p.relative_to(demo / "dicom")) for p in (demo / "dicom").rglob("*") if p.is_file())
    assert files == sorted(r["file"] for r in rows)
    # nested patient/study folders; names with and without .dcm
    assert all(len(Path(f).parts) >= 3 for f in files)
    assert any(f.lower().endswith(".dcm") for f in files) and any("." not in Path(f).name for f in files)
    assert art.counts["nodule"] == sum(int(r["nodule"]) for r in rows)
    # the fingerprint is that of the settings as given, so a pipeline's dry run can compute it
    assert art.params["transfer_syntaxes"] == ["auto"]
    assert art.fingerprint == compute_fingerprint("demo", DemoConfig(**SMALL), [])


def test_every_file_decodes_to_its_phantom(demo):
    cfg, cases = _config(demo), _cases(demo)
    for row in _rows(demo):
        case = cases[row["file"]]
        truth = render_case(cfg, case)
        ds = pydicom.dcmread(demo / "dicom" / row["file"])
        assert ds.file_meta.TransferSyntaxUID == codecs.BY_KEY[case.syntax].uid
        expected = np.frombuffer(truth.dataset.PixelData, truth.storage.dtype).reshape(ds.Rows, ds.Columns)
        if codecs.BY_KEY[case.syntax].lossy:
            assert np.abs(ds.pixel_array.astype(int) - expected.astype(int)).mean() < 2.0
        else:
            np.testing.assert_array_equal(ds.pixel_array, expected)
        presented = _presented(ds)
        assert np.corrcoef(presented.ravel(), truth.phantom.image.ravel())[0, 1] > 0.98


def test_simpleitk_reads_every_file_as_pydicom_does(demo):
    """A second reader (SimpleITK, through GDCM) agrees with pydicom on every radiograph."""
    sitk = pytest.importorskip("SimpleITK")
    for p in (demo / "dicom").rglob("*"):
        if not p.is_file():
            continue
        ds = pydicom.dcmread(p)
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(p))).squeeze().astype(np.float64)
        ours = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        assert theirs.shape == ours.shape
        if ds.PhotometricInterpretation == "MONOCHROME1":  # GDCM inverts MONOCHROME1 itself
            assert np.corrcoef(theirs.ravel(), ours.ravel())[0, 1] < -0.999, p
        elif ds.file_meta.TransferSyntaxUID == codecs.BY_KEY["jpeg-baseline"].uid:
            assert np.abs(theirs - ours).max() <= 2, p  # lossy: decoders may round differently
        else:
            np.testing.assert_array_equal(theirs, ours, err_msg=str(p))


def test_advertised_transfer_syntaxes_are_all_present(demo):
    art = open_artifact(demo, "demo")
    advertised = {v["uid"] for v in art.contents["transfer_syntaxes"].values()}
    assert advertised == {str(s.uid) for s in codecs.available_syntaxes()}
    found = Counter()
    for p in (demo / "dicom").rglob("*"):
        if p.is_file():
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            found[str(ds.file_meta.TransferSyntaxUID)] += 1
    assert set(found) == advertised
    assert sum(found.values()) == SMALL["n"]
    # the manifest's tally matches the files
    by_name = {codecs.BY_KEY[k].name: v["uid"] for k, v in art.contents["transfer_syntaxes"].items()}
    assert {by_name[name]: n for name, n in art.counts["by_transfer_syntax"].items()} == dict(found)


def test_default_archive_covers_the_variety_it_promises():
    cfg = DemoConfig().resolved()  # planned only: nothing is drawn
    storages = [storage_for(cfg, c) for c in plan_cases(cfg)]
    assert {s.voi for s in storages} == {"window", "windows", "sigmoid", "lut", "none"}
    assert {s.photometric for s in storages} == {"MONOCHROME1", "MONOCHROME2"}
    assert {s.bits_stored for s in storages} == {8, 10, 12, 14, 16}
    assert {s.bits_allocated for s in storages} == {8, 16}
    assert any(s.signed for s in storages) and any(s.slope not in (None, 1.0) for s in storages)
    assert {s.syntax for s in storages} == set(cfg.transfer_syntaxes)


def test_findings_are_frequent_and_independent():
    cfg = DemoConfig().resolved()
    cases = plan_cases(cfg)
    f = [findings_for(cfg, c) for c in cases]
    nodule = np.array([x.nodule for x in f])
    effusion = np.array([x.effusion for x in f])
    assert 0.33 <= nodule.mean() <= 0.52 and 0.33 <= effusion.mean() <= 0.52
    assert abs(np.corrcoef(nodule, effusion)[0, 1]) < 0.15
    per_patient = Counter(c.patient for c in cases)
    assert 10 <= sum(1 for v in per_patient.values() if v == 2) <= 40


def test_labels_match_what_was_drawn(demo):
    cfg, cases = _config(demo), _cases(demo)
    seen = Counter()
    for row in _rows(demo):
        case = cases[row["file"]]
        full, plain = render_case(cfg, case), render_case(cfg, case, with_findings=False)
        diff = full.phantom.image - plain.phantom.image
        lungs = full.phantom.lungs
        v = full.view
        nodules, effusions = full.phantom.findings.nodules, full.phantom.findings.effusions
        assert int(row["nodule"]) == int(bool(nodules)) and int(row["effusion"]) == int(bool(effusions))
        if not nodules and not effusions:
            assert np.abs(diff).max() < 1e-6  # nothing drawn
        for n in nodules:  # a bright round opacity inside a lung
            cy, cx = int(round(v.top + n.y * v.scale)), int(round(v.cx + n.x * v.scale))
            assert lungs[cy, cx] and diff[cy, cx] > 0.1
        for e in effusions:  # the lung base on that side turns white; the apex does not change
            side = np.zeros_like(lungs)
            if e.side < 0:
                side[:, : int(v.cx)] = True
            else:
                side[:, int(v.cx) :] = True
            ys = np.nonzero(lungs & side)[0]
            base = lungs & side & (np.arange(lungs.shape[0])[:, None] > ys.max() - 0.05 * v.scale)
            apex = lungs & side & (np.arange(lungs.shape[0])[:, None] < ys.min() + 0.1 * v.scale)
            assert diff[base].mean() > 0.1
            assert np.abs(diff[apex]).max() < 0.02 or any(n.side == e.side for n in nodules)
        seen["nodule"] += bool(nodules)
        seen["effusion"] += bool(effusions)
    assert seen["nodule"] and seen["effusion"]


def test_lung_masks_are_exact_and_align_with_the_image(demo):
    cfg, cases = _config(demo), _cases(demo)
    for row in _rows(demo):
        case = cases[row["file"]]
        mask = cv2.imread(str(demo / "masks" / f"{case.stem}.png"), cv2.IMREAD_UNCHANGED)
        ds = pydicom.dcmread(demo / "dicom" / row["file"])
        assert mask.shape == (ds.Rows, ds.Columns) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        truth = render_case(cfg, case)
        np.testing.assert_array_equal(mask > 0, truth.phantom.lungs)
        assert cv2.connectedComponents((mask > 0).astype(np.uint8))[0] == 3  # background + two lungs
        # lungs are dark: just inside the mask edge is darker than just outside it
        image = _presented(ds)
        k = np.ones((5, 5), np.uint8)
        inner = (mask > 0) & ~(cv2.dilate(255 - mask, k, iterations=2) > 0)
        outer = (cv2.dilate(mask, k, iterations=3) > 0) & ~(cv2.dilate(mask, k, iterations=1) > 0)
        assert image[inner].mean() + 0.08 < image[outer].mean()
    assert len(list((demo / "masks").glob("*.png"))) == SMALL["n"]


def test_dicom_identity_matches_labels_and_looks_like_real_phi(demo):
    rows = _rows(demo)
    by_patient: dict[str, list] = {}
    for row in rows:
        ds = pydicom.dcmread(demo / "dicom" / row["file"], stop_before_pixels=True)
        assert ds.PatientID == row["patient_id"] and ds.PatientID.startswith("DEMO")
        assert ds.PatientSex == row["sex"] and ds.ViewPosition == row["view"]
        birth = dt.datetime.strptime(ds.PatientBirthDate, "%Y%m%d").date()
        study = dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()
        age = study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
        assert age == int(row["age"])
        if "PatientAge" in ds:
            assert ds.PatientAge == f"{age:03d}Y"
        for keyword in (
            "PatientName",
            "AccessionNumber",
            "InstitutionName",
            "ReferringPhysicianName",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "StationName",
            "ImageComments",
        ):
            assert str(ds.get(keyword, "")).strip(), keyword
        assert str(ds.PatientName).split("^")[0] in ds.ImageComments.upper()  # free text naming the patient
        assert ds.Modality in ("CR", "DX") and ds.BodyPartExamined == "CHEST" and ds.Manufacturer
        by_patient.setdefault(ds.PatientID, []).append(ds)
    twice = [v for v in by_patient.values() if len(v) == 2]
    assert twice, "some patients must have two images"
    for a, b in twice:
        assert a.PatientName == b.PatientName and a.PatientBirthDate == b.PatientBirthDate
        assert a.StudyInstanceUID != b.StudyInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    assert len({r["file"] for r in rows}) == len(rows)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    cfg = DemoConfig(n=6, seed=11, min_size=80, max_size=120, ultrasound=1)
    a, b, c = (
        run_demo(tmp_path / "a", cfg),
        run_demo(tmp_path / "b", cfg),
        run_demo(tmp_path / "c", DemoConfig(**{**cfg.__dict__, "seed": 12})),
    )
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file() and p.name != "manifest.yaml"
    )
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert a.content_fingerprint == b.content_fingerprint != c.content_fingerprint
    assert (tmp_path / "a" / "labels.csv").read_text() != (tmp_path / "c" / "labels.csv").read_text()


def test_rerun_is_up_to_date_and_force_rewrites(tmp_path):
    cfg = DemoConfig(n=3, min_size=80, max_size=100)
    first = run_demo(tmp_path / "d", cfg)
    again = run_demo(tmp_path / "d", cfg)
    assert again.manifest["finished"] == first.manifest["finished"]
    forced = run_demo(tmp_path / "d", cfg, force=True)
    assert forced.content_fingerprint == first.content_fingerprint  # same seed, same files
    changed = run_demo(tmp_path / "d", DemoConfig(n=4, min_size=80, max_size=100))
    assert changed.counts["images"] == 4 and len(_rows(tmp_path / "d")) == 4


def test_cli_demo_data(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    dry = runner.invoke(app, ["demo-data", "--out", str(out), "--n", "4", "--dry-run", "--json"])
    assert dry.exit_code == 0 and not out.exists()
    res = runner.invoke(
        app,
        [
            "demo-data",
            "--out",
            str(out),
            "--n",
            "4",
            "--seed",
            "2",
            "--ultrasound",
            "1",
            "--set",
            "max_size=120",
            "--set",
            "min_size=80",
            "--json",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["kind"] == "demo" and data["counts"]["images"] == 4 and data["counts"]["ultrasound"] == 1
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    assert manifest["status"] == "complete" and manifest["params"]["seed"] == 2
    bad = runner.invoke(app, ["demo-data", "--out", str(tmp_path / "x"), "--set", "transfer_syntaxes=jpeg-xl"])
    assert bad.exit_code == 2 and not (tmp_path / "x").exists()
