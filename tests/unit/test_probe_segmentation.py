"""The segmentation probe: Dice/IoU equal a direct numpy computation, and a probe on frozen patch tokens
learns a bright region (Dice > 0.9), from stored patch tokens or computed on the fly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.data.store import default_meta, write_dataset
from cxrjepa.probe import seg_metrics


def numpy_dice_iou(pred: np.ndarray, true: np.ndarray, c: int, ignore: int = 255) -> tuple[float, float]:
    ok = true != ignore
    p, t = (pred == c) & ok, (true == c) & ok
    inter, total, union = (p & t).sum(), p.sum() + t.sum(), (p | t).sum()
    return (2 * inter / total if total else np.nan), (inter / union if union else np.nan)


def test_dice_and_iou_equal_numpy():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, (6, 20, 24)).astype(np.uint8)
    pred = np.where(rng.random(true.shape) < 0.7, true, rng.integers(0, 3, true.shape)).astype(np.uint8)
    true[0, :5] = 255  # ignored pixels
    true[1][true[1] == 2] = 0  # class 2 absent from truth of image 1 ...
    pred[1][pred[1] == 2] = 1  # ... and from its prediction: undefined there
    inter, p_cnt, t_cnt = seg_metrics.confusion_counts(pred, true, 3)
    dice, iou = seg_metrics.dice_iou(inter[:, 1:], p_cnt[:, 1:], t_cnt[:, 1:])
    for i in range(len(true)):
        for c in (1, 2):
            d, j = numpy_dice_iou(pred[i], true[i], c)
            np.testing.assert_allclose([dice[i, c - 1], iou[i, c - 1]], [d, j], equal_nan=True)
    assert np.isnan(dice[1, 1]) and np.isnan(iou[1, 1])
    ev = seg_metrics.evaluate(dice, iou, np.array(["a", "a", "b", "c", "d", "e"]), ["one", "two"], n_boot=300, seed=1)
    per_class = [np.nanmean(dice[:, c]) for c in range(2)]
    assert ev["per_class"]["two"]["dice"]["value"] == pytest.approx(per_class[1], abs=1e-6)  # NaN image left out
    assert ev["metrics"]["dice"]["value"] == pytest.approx(np.mean(per_class), abs=1e-6)
    assert ev["metrics"]["iou"]["value"] == pytest.approx(np.mean([np.nanmean(iou[:, c]) for c in range(2)]), abs=1e-6)
    lo, hi = ev["metrics"]["dice"]["ci"]
    assert lo <= ev["metrics"]["dice"]["value"] <= hi and hi - lo > 0
    assert "ci" not in seg_metrics.evaluate(dice, iou, np.arange(6), ["one", "two"], n_boot=0)["metrics"]["dice"]


def bright_region_dataset(path, n: int = 40, size: int = 64, seed: int = 0):
    """Noisy images with a bright rectangle on the 8-pixel patch grid; the mask is the rectangle."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(0, 4, 2) * 8
        h, w = rng.integers(3, 5, 2) * 8
        masks[i, y0 : y0 + h, x0 : x0 + w] = 1
        images[i] = np.clip(rng.normal(60, 12, (size, size)) + 140 * masks[i], 0, 255).astype(np.uint8)
    meta = default_meta(n)
    meta["patient_key"] = [f"p{i // 2:03d}" for i in range(n)]  # two images per patient
    meta["has_mask"] = True
    return write_dataset(path, images, meta, masks=masks)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from cxrjepa.embed.api import EmbedConfig, EmbedOptions, run_embed

    root = tmp_path_factory.mktemp("seg")
    bright_region_dataset(root / "ds")
    run_embed(
        root / "emb",
        EmbedConfig(patch_tokens=True),
        encoder="random:tiny/8",
        data=root / "ds",
        options=EmbedOptions(device="cpu", batch_size=64),
    )
    run_embed(
        root / "emb-pooled",
        EmbedConfig(),
        encoder="random:tiny/8",
        data=root / "ds",
        options=EmbedOptions(device="cpu", batch_size=64),
    )
    return root


def probe(emb, out, *extra):
    return CliRunner().invoke(
        app,
        [
            "probe",
            "--embeddings",
            str(emb),
            "--out",
            str(out),
            "--task",
            "segmentation",
            "--bootstrap",
            "100",
            "--fewshot",
            "25,100",
            "--seeds",
            "2",
            "--quiet",
            "--json",
            "--set",
            "segmentation.epochs=30",
            *extra,
        ],
    )


def test_probe_learns_a_bright_region(chain):
    res = probe(chain / "emb", chain / "probe")
    assert res.exit_code == 0, res.output
    seg = json.loads(res.stdout)["segmentation"]
    assert seg["classes"] == ["1"] and seg["features"] == "patch_tokens" and seg["grid"] == [8, 8]
    assert sum(seg["n"].values()) == 40 and seg["n"]["test"] > 0
    for head in ("linear", "conv"):
        dice = seg["probes"][head]["metrics"]["dice"]
        assert dice["value"] > 0.9, (head, dice)
        assert dice["ci"][0] <= dice["value"] <= dice["ci"][1]
    few = seg["fewshot"]["linear"]
    assert [f["fraction"] for f in few] == [0.25, 1.0] and few[0]["seeds"] == 2
    # per-image table: one row per test image, head and class, agreeing with the metrics
    table = pd.read_parquet(chain / "probe" / "segmentation.parquet")
    lin = table[table["head"] == "linear"]
    assert len(lin) == seg["n"]["test"] and lin["dice"].mean() == pytest.approx(
        seg["probes"]["linear"]["metrics"]["dice"]["value"], abs=1e-6
    )
    # the stored predictions are the label maps behind the table
    import zarr

    from cxrjepa.data.store import DatasetArtifact

    group = zarr.open_group(str(chain / "probe" / "segmentation.zarr"), mode="r")
    ds = DatasetArtifact.open(chain / "ds")
    ids = list(ds.meta["sample_id"])
    for _, r in lin.head(3).iterrows():
        pred = np.asarray(group["linear"][int(r["prediction_index"])])
        assert group.attrs["sample_id"][int(r["prediction_index"])] == r["sample_id"]
        true = np.asarray(ds.masks[ids.index(r["sample_id"])])
        assert numpy_dice_iou(pred, true, 1)[0] == pytest.approx(r["dice"])
    split = pd.read_csv(chain / "probe" / "split.csv")
    assert split.groupby("patient_key")["split"].nunique().max() == 1  # patient-level


def test_tokens_computed_on_the_fly_give_the_same_result(chain):
    """Embeddings without patch tokens: the encoder computes them; the probe's numbers do not change."""
    res = probe(chain / "emb-pooled", chain / "probe-fly", "--set", "segmentation.heads=[linear]", "--fewshot", "none")
    assert res.exit_code == 0, res.output
    seg = json.loads(res.stdout)["segmentation"]
    ref = json.loads((chain / "probe" / "metrics.json").read_text())["segmentation"]
    assert seg["features"] == "encoder" and list(seg["probes"]) == ["linear"]
    assert seg["probes"]["linear"]["metrics"]["dice"]["value"] == pytest.approx(
        ref["probes"]["linear"]["metrics"]["dice"]["value"], abs=1e-3
    )


def test_a_dataset_without_masks_is_a_clear_error(tmp_path):
    from cxrjepa.embed.api import EmbedConfig, EmbedOptions, run_embed

    write_dataset(tmp_path / "ds", np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8))
    run_embed(
        tmp_path / "emb",
        EmbedConfig(),
        encoder="random:tiny/8",
        data=tmp_path / "ds",
        options=EmbedOptions(device="cpu"),
    )
    res = probe(tmp_path / "emb", tmp_path / "probe")
    assert res.exit_code == 2 and "has no masks" in res.output


def test_report_shows_dice_and_overlays(chain):
    """The report's probe section has the Dice table and an overlay figure of predicted vs true masks."""
    from PIL import Image

    from cxrjepa.report.api import run_report

    if not (chain / "probe" / "metrics.json").is_file():
        assert probe(chain / "emb", chain / "probe").exit_code == 0
    from cxrjepa.core.config import to_dict
    from cxrjepa.probe.layout import Probe
    from tests.report_chain import unread_fields

    written = Probe.open(chain / "probe")  # what the report reads is everything the probe wrote
    raw = json.loads((chain / "probe" / "metrics.json").read_text())
    assert unread_fields(raw, to_dict(written.metrics)) == [] and written.metrics.segmentation.per_image
    art = run_report(chain / "report", artifacts=[chain / "probe"], device="cpu")
    html = (art.path / "index.html").read_text()
    summary = (art.path / "summary.md").read_text()
    assert "Segmentation: 1" in html and "Dice" in html and "IoU" in html
    assert "segmentation: Dice" in summary  # the headline table lists the segmentation probe too
    fig = art.path / "figures" / "probe-segmentation-overlays.png"
    assert fig.is_file()
    img = np.asarray(Image.open(fig).convert("RGB")).astype(int)
    red = (img[..., 0] > 150) & (img[..., 1] < 110) & (img[..., 2] < 110)  # predicted fill
    green = (img[..., 1] > 120) & (img[..., 0] < 90) & (img[..., 2] < 90)  # true outline
    assert red.sum() > 200 and green.sum() > 200
