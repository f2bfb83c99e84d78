"""Masks through ingest (--masks): paired by name, stored as uint8 label maps with exactly the image's
geometry, rejected with a reason when they do not fit, and deterministic whatever the workers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.ingest import IngestConfig, IngestOptions, run_ingest
from tests.dicom_files import make_dataset, write_dicom

SALT = "mask-test-salt-0123456789"


@pytest.fixture(autouse=True)
def _salt(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRJEPA_SALT", SALT)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def shape_image(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark 16-bit image with a bright drawn polygon, and the polygon's mask (0/255)."""
    rng = np.random.default_rng(seed)
    img = (rng.normal(300, 20, (h, w))).clip(0, 65535).astype(np.uint16)
    pts = np.array([[w * 0.15, h * 0.25], [w * 0.75, h * 0.15], [w * 0.65, h * 0.85], [w * 0.3, h * 0.7]], np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [pts], 255)
    img[mask > 0] = 3000
    return img, mask


def ingest(src, out, masks=None, size=48, workers=1, **kw):
    cfg = IngestConfig(size=size, **kw.pop("config", {}))
    return run_ingest(out, cfg, sources=[src], masks=masks, options=IngestOptions(workers=workers, **kw))


def stored(ds: DatasetArtifact, rel: str) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    row = ds.meta[ds.meta["source_path"] == rel].iloc[0]
    f = int(row["frame_start"])
    return np.asarray(ds.images[f]), np.asarray(ds.masks[f]), row


@pytest.mark.parametrize("shape", [(90, 40), (40, 90), (33, 70), (64, 64)])
def test_stored_mask_covers_the_stored_shape(tmp_path, shape):
    """Portrait, landscape and padded images: the stored mask is exactly where the bright shape is stored."""
    h, w = shape
    img, mask = shape_image(h, w, seed=h * w)
    write_dicom(make_dataset(img, bits_stored=12), tmp_path / "in" / "P1" / "img.dcm")
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "img_mask.png"), mask)
    ds = DatasetArtifact.open(ingest(tmp_path / "in", tmp_path / "out", masks=[tmp_path / "masks"]).path)
    image, smask, row = stored(ds, "P1/img.dcm")
    assert bool(row["has_mask"]) and set(np.unique(smask)) == {0, 1}
    bright = image > 127
    # the same pixels, except where area averaging blends the shape's edge with the background
    edge = cv2.dilate(smask, np.ones((3, 3), np.uint8)) != cv2.erode(smask, np.ones((3, 3), np.uint8))
    assert np.array_equal(bright[~edge], smask[~edge].astype(bool))
    inter, union = (bright & (smask > 0)).sum(), (bright | (smask > 0)).sum()
    assert inter / union > 0.9
    # padding stays background in both
    g_pad_y, g_pad_x = int(row["pad_y"]), int(row["pad_x"])
    if g_pad_y:
        assert not smask[:g_pad_y].any() and not image[:g_pad_y].any()
    if g_pad_x:
        assert not smask[:, :g_pad_x].any() and not image[:, :g_pad_x].any()


def test_formats_classes_and_label_maps(tmp_path):
    """PNG label maps keep their values, JPEG is thresholded, NIfTI and named class folders work, and the
    manifest names the classes."""
    import SimpleITK as sitk

    src, lab = tmp_path / "in", tmp_path / "labels"
    src.mkdir()
    lab.mkdir()
    imgs = {}
    for name in ("a", "b", "c"):
        img, mask = shape_image(40, 50, seed=ord(name))
        cv2.imwrite(str(src / f"{name}.png"), img)
        imgs[name] = mask
    label_map = (imgs["a"] > 0).astype(np.uint8) * 2
    label_map[:5, :5] = 3
    cv2.imwrite(str(lab / "a.png"), label_map)
    cv2.imwrite(str(lab / "b.jpg"), imgs["b"], [cv2.IMWRITE_JPEG_QUALITY, 60])  # lossy: thresholded
    sitk.WriteImage(sitk.GetImageFromArray((imgs["c"] > 0).astype(np.uint8)), str(lab / "c.nii.gz"))
    art = ingest(src, tmp_path / "out", masks=[lab], config={"mask_classes": ["x", "lung", "corner"]})
    ds = DatasetArtifact.open(art.path)
    from cxrjepa.ingest.geometry import Geometry, apply_geometry

    for name, expect in (
        ("a", label_map),
        ("b", (imgs["b"] > 0).astype(np.uint8)),
        ("c", (imgs["c"] > 0).astype(np.uint8)),
    ):
        _, smask, row = stored(ds, f"{name}.png")
        want = apply_geometry(expect, Geometry.from_row(row, 48), nearest=True)
        if name == "b":  # JPEG ringing may flip a few edge pixels
            assert (smask != want).mean() < 0.01
        else:
            assert np.array_equal(smask, want)
    masks = art.contents["masks"]
    assert masks["classes"] == {"1": "x", "2": "lung", "3": "corner"} and masks["values"] == [1, 2, 3]
    assert masks["dtype"] == "uint8" and masks["shape"] == [3, 48, 48] and art.counts["masks"] == 3

    # named binary class folders: classes 1, 2 in the order given, later wins where they overlap
    left, right = tmp_path / "L", tmp_path / "R"
    left.mkdir()
    right.mkdir()
    for name in ("a", "b"):
        m = imgs[name]
        lm, rm = m.copy(), m.copy()
        lm[:, 25:] = 0
        rm[:, :20] = 0
        cv2.imwrite(str(left / f"{name}.png"), lm)
        cv2.imwrite(str(right / f"{name}-mask.png"), rm)
    art2 = ingest(src, tmp_path / "out2", masks=[f"left={left}", f"right={right}"])
    ds2 = DatasetArtifact.open(art2.path)
    _, smask, row = stored(ds2, "a.png")
    assert set(np.unique(smask)) == {0, 1, 2}
    assert not bool(stored(ds2, "c.png")[2]["has_mask"]) and not stored(ds2, "c.png")[1].any()
    assert art2.contents["masks"]["classes"] == {"1": "left", "2": "right"}
    assert art2.counts["masks"] == 2 and art2.counts["rejected"] == 0


def test_bad_masks_are_rejections_with_reasons(tmp_path):
    src, lab = tmp_path / "in", tmp_path / "masks"
    for d in (src / "x", src / "y", lab):
        d.mkdir(parents=True)
    img, mask = shape_image(40, 50, seed=1)
    cv2.imwrite(str(src / "x" / "ok.png"), img)
    cv2.imwrite(str(lab / "ok.png"), mask)
    cv2.imwrite(str(src / "x" / "small.png"), img)
    cv2.imwrite(str(lab / "small.png"), mask[:30])  # wrong size
    cv2.imwrite(str(src / "x" / "twin.png"), img + 1)
    cv2.imwrite(str(src / "y" / "twin.png"), img + 2)
    cv2.imwrite(str(lab / "twin.png"), mask)  # which twin?
    cv2.imwrite(str(src / "x" / "colour.png"), img + 3)
    colour = np.zeros((40, 50, 3), np.uint8)
    colour[..., 2] = mask
    cv2.imwrite(str(lab / "colour.png"), colour)
    (lab / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    cv2.imwrite(str(src / "x" / "broken.png"), img + 4)
    res = CliRunner().invoke(
        app,
        [
            "ingest",
            str(src),
            "--out",
            str(tmp_path / "out"),
            "--masks",
            str(lab),
            "--size",
            "32",
            "--workers",
            "1",
            "--quiet",
        ],
    )
    assert res.exit_code == 3, res.output
    failures = {
        json.loads(line)["path"]: json.loads(line)
        for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()
    }
    assert failures["x/small.png"]["reason"] == "mask size differs from the image"
    assert failures["x/small.png"]["detail"] == "mask 30x50, image 40x50"
    assert (
        failures["x/twin.png"]["reason"]
        == failures["y/twin.png"]["reason"]
        == "mask name matches several inputs or files"
    )
    assert failures["x/colour.png"]["reason"] == "mask values are not a label map"
    assert failures["x/broken.png"]["reason"] == "unreadable mask"
    ds = DatasetArtifact.open(tmp_path / "out")
    assert list(ds.meta["source_path"]) == ["x/ok.png"] and bool(ds.meta["has_mask"].iloc[0])


def test_masks_are_deterministic_across_workers_and_units(tmp_path):
    """Units with and without masks, one or two workers: the same dataset, masks and fingerprint."""
    src, lab = tmp_path / "in", tmp_path / "masks"
    lab.mkdir()
    for i in range(14):
        img, mask = shape_image(30 + i, 40, seed=i)
        write_dicom(make_dataset(img, bits_stored=12), src / f"s{i % 3}" / f"img{i:02d}.dcm")
        if i % 3:  # some inputs have no mask
            cv2.imwrite(str(lab / f"img{i:02d}.png"), mask)
    a = ingest(src, tmp_path / "a", masks=[lab], workers=1, unit_size=3)
    b = ingest(src, tmp_path / "b", masks=[lab], workers=2, unit_size=2)
    da, db = DatasetArtifact.open(a.path), DatasetArtifact.open(b.path)
    pd.testing.assert_frame_equal(da.meta, db.meta)
    assert np.array_equal(da.masks[:], db.masks[:]) and np.array_equal(da.images[:], db.images[:])
    assert a.content_fingerprint == b.content_fingerprint
    has = da.meta["has_mask"].to_numpy()
    assert has.sum() == 9
    for _, row in da.meta.iterrows():  # no mask: an empty frame; a mask: a non-empty one
        assert bool(np.asarray(da.masks[int(row["frame_start"])]).any()) == bool(row["has_mask"])
    # a mask-less ingest of the same inputs has no masks array and says so
    c = ingest(src, tmp_path / "c")
    dc = DatasetArtifact.open(c.path)
    assert dc.masks is None and c.contents["masks"] is False and not dc.meta["has_mask"].any()
    assert c.content_fingerprint != a.content_fingerprint


def test_masks_from_a_labels_column(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (tmp_path / "m").mkdir()
    rows = []
    for name in ("a", "b"):
        img, mask = shape_image(36, 44, seed=ord(name))
        cv2.imwrite(str(src / f"{name}.png"), img)
        half = mask.copy()
        half[:, :22] = 0
        cv2.imwrite(str(tmp_path / "m" / f"{name}_1.png"), mask)
        cv2.imwrite(str(tmp_path / "m" / f"{name}_2.png"), half)
        rows.append(
            {
                "file": f"{name}.png",
                "finding": int(name == "b"),
                "mask": f"m/{name}_1.png|m/{name}_2.png" if name == "a" else f"m/{name}_1.png",
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    art = run_ingest(
        tmp_path / "out",
        IngestConfig(size=32, labels_mask_column="mask"),
        sources=[src],
        labels=tmp_path / "labels.csv",
        options=IngestOptions(workers=1),
    )
    ds = DatasetArtifact.open(art.path)
    assert art.contents["label_columns"] == ["finding"]  # the masks column is not a label
    assert set(np.unique(stored(ds, "a.png")[1])) == {0, 1, 2}  # k-th file -> class k
    assert set(np.unique(stored(ds, "b.png")[1])) == {0, 1}


def test_dicom_seg_masks(tmp_path):
    """A DICOM SEG is read with highdicom, must reference its image, and names its classes."""
    hd = pytest.importorskip("highdicom")
    import pydicom
    from pydicom.sr.codedict import codes

    tags = {
        "PatientName": "Test^Patient",
        "StudyDate": "20200101",
        "StudyTime": "",
        "ReferringPhysicianName": "",
        "StudyID": "1",
        "AccessionNumber": "",
        "SeriesNumber": 1,
        "InstanceNumber": 1,
        "PatientBirthDate": "",
    }
    src, lab = tmp_path / "in", tmp_path / "seg"
    lab.mkdir()
    img, mask = shape_image(40, 30, seed=3)
    write_dicom(make_dataset(img, bits_stored=12, tags=tags), src / "a.dcm")
    write_dicom(make_dataset(img + 7, bits_stored=12, tags=tags), src / "b.dcm")
    other = make_dataset(img, bits_stored=12, tags=tags)  # an image that is not among the inputs
    write_dicom(other, tmp_path / "other.dcm")
    labels = (mask > 0).astype(np.uint8)
    labels[:6, :6] = 2

    def seg_for(path: Path, out: Path) -> None:
        ds = pydicom.dcmread(path)
        descs = [
            hd.seg.SegmentDescription(
                segment_number=n,
                segment_label=f"s{n}",
                segmented_property_category=codes.SCT.Organ,
                segmented_property_type=t,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
            for n, t in ((1, codes.SCT.Lung), (2, codes.SCT.Heart))
        ]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.Segmentation(
                source_images=[ds],
                pixel_array=labels,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descs,
                series_instance_uid=hd.UID(),
                series_number=2,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="m",
                manufacturer_model_name="m",
                software_versions="1",
                device_serial_number="1",
            )
        seg.save_as(out)

    seg_for(src / "a.dcm", lab / "a_seg.dcm")
    seg_for(tmp_path / "other.dcm", lab / "b.dcm")  # named like b, but references another image
    art = ingest(src, tmp_path / "out", masks=[lab], size=30)
    ds = DatasetArtifact.open(art.path)
    from cxrjepa.ingest.geometry import Geometry, apply_geometry

    _, smask, row = stored(ds, "a.dcm")
    assert np.array_equal(smask, apply_geometry(labels, Geometry.from_row(row, 30), nearest=True))
    assert art.contents["masks"]["classes"] == {"1": "Lung", "2": "Heart"}
    failures = [json.loads(line) for line in (art.path / "failures.jsonl").read_text().splitlines()]
    assert [(f["path"], f["reason"]) for f in failures] == [("b.dcm", "DICOM SEG mask references another image")]
    text = (art.path / "manifest.yaml").read_text() + (art.path / "failures.jsonl").read_text()
    assert "Test^Patient" not in text and "s1" not in text.split()  # no names, no free-text segment labels


def test_demo_archive_with_its_masks(tmp_path):
    """`cxrjepa ingest DEMO/dicom --masks DEMO/masks`: every radiograph gets its lung mask."""
    from cxrjepa.demo.api import DemoConfig, run_demo

    demo = run_demo(tmp_path / "demo", DemoConfig(n=6)).path
    res = CliRunner().invoke(
        app,
        [
            "ingest",
            str(demo / "dicom"),
            "--out",
            str(tmp_path / "ds"),
            "--masks",
            f"lung={demo / 'masks'}",
            "--size",
            "48",
            "--workers",
            "1",
            "--quiet",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout)["counts"]
    assert counts["masks"] == counts["samples"] == 6 and counts["mask_files_unmatched"] == 0
    ds = DatasetArtifact.open(tmp_path / "ds")
    assert ds.artifact.contents["masks"]["classes"] == {"1": "lung"}
    for f in range(6):  # lungs are darker than the mediastinum around them in every stored image
        img, m = np.asarray(ds.images[f]).astype(float), np.asarray(ds.masks[f]) > 0
        assert m.mean() > 0.1 and img[m].mean() < img[~m & (img > 0)].mean()


def test_dry_run_reports_the_pairing(tmp_path):
    src, lab = tmp_path / "in", tmp_path / "masks"
    for d in (src, lab):
        d.mkdir()
    for name in ("a", "b", "c"):
        img, mask = shape_image(30, 30, seed=ord(name))
        cv2.imwrite(str(src / f"{name}.png"), img)
        if name != "c":
            cv2.imwrite(str(lab / f"{name}_mask.png"), mask)
    cv2.imwrite(str(lab / "zzz.png"), mask)
    plan = run_ingest(
        tmp_path / "out",
        IngestConfig(size=32),
        sources=[src],
        masks=[lab],
        dry_run=True,
        options=IngestOptions(workers=1),
    )
    assert plan["masks"]["inputs_with_masks"] == 2 and plan["masks"]["mask_files_unmatched"] == 1
    assert plan["would_ingest"] == 3 and not (tmp_path / "out").exists()
