"""In-training probes: a learnable label scores well above chance while a noise label does not, the scores land
in metrics.jsonl / metrics.csv at the configured steps, ``selection: probe`` exports the best-scoring checkpoint,
identifying columns of ``--probe-labels`` reach no output, and a resumed run logs the same probe rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
import yaml
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.config import load_config
from cxrjepa.data.store import default_meta, write_dataset
from cxrjepa.pretrain import PretrainConfig, run_pretrain
from cxrjepa.pretrain.checkpoint import list_checkpoints
from cxrjepa.pretrain.monitors import MetricsLog
from cxrjepa.pretrain.objectives.ijepa import IJEPA
from tests.integration.test_labels_phi import _texts, markers, planted_labels
from tests.integration.test_pretrain_run import TINY

N = 96
EFFUSION = "probe/effusion/linear_auroc"
NOISE = "probe/noise/linear_auroc"
DENSITY = "probe/density/linear_mae"
#: log every step, probe every 2nd: probe rows are a subset of the logged ones; keep every checkpoint
SETS = {
    "runtime.log_every": 1,
    "runtime.probe_every": 2,
    "runtime.keep_last": 8,
    "selection": "probe",
    "runtime.probe_select": DENSITY,  # a continuous score (lower is better) that moves from step to step
}


def chests(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chest-like images of varying density; half of them with a bright band at the bottom (an "effusion"):
    (images, labels, densities)."""
    rng = np.random.default_rng(seed)
    size = 40
    yy, xx = np.mgrid[0:size, 0:size] / size
    labels = rng.random(n) < 0.5
    density = rng.uniform(0.4, 0.7, n)
    images = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        im = np.where(((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.48) ** 2 < 1, density[i], 0.1)
        if labels[i]:
            im = np.where(yy > 0.72, 0.95, im)
        images[i] = np.clip((im + rng.normal(0, 0.05, im.shape)) * 255, 0, 255).astype(np.uint8)
    return images, labels, density


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two images per patient; label columns ``effusion`` (seen in the image), ``density`` (a number, seen in the
    image) and ``noise`` (independent of the image)."""
    images, labels, density = chests(N)
    meta = default_meta(N)
    meta["patient_key"] = [f"p{i // 2:03d}" for i in range(N)]
    meta["source_path"] = [f"img{i:03d}.dcm" for i in range(N)]
    meta["effusion"] = np.where(labels, "present", "absent")
    meta["density"] = density
    meta["noise"] = np.where(np.random.default_rng(1).random(N) < 0.5, "yes", "no")
    path = tmp_path_factory.mktemp("probes") / "data"
    write_dataset(path, images, meta, label_columns=["effusion", "density", "noise"])
    return path


def config(**sets) -> PretrainConfig:
    return load_config(PretrainConfig, layers=[TINY], overrides=[f"{k}={v}" for k, v in {**SETS, **sets}.items()])


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probes") / "straight"
    run_pretrain(out, config(), data=dataset)
    return out


def probe_rows(run: Path) -> dict[int, dict]:
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("probe/")} for r in MetricsLog.read(run)}


def test_a_learnable_label_scores_above_chance_at_the_configured_steps(straight):
    rows = probe_rows(straight)
    assert sorted(rows) == list(range(9))  # every step is logged ...
    probed = [s for s, r in rows.items() if r]
    assert probed == [0, 2, 4, 6, 8]  # ... and probed at step 0 (random init), every 2 steps and the end
    for step in probed:
        r = rows[step]
        assert set(r) == {
            f"probe/{t}/{k}_{m}"
            for t, metrics in (
                ("effusion", ("auroc", "balanced_accuracy")),
                ("noise", ("auroc", "balanced_accuracy")),
                ("density", ("mae", "r2")),
            )
            for k in ("linear", "knn")
            for m in metrics
        }
        assert r[EFFUSION] > 0.9 and r["probe/effusion/knn_auroc"] > 0.75, (step, r)
        assert r[NOISE] < 0.75, (step, r)  # a label the images do not show stays near chance
        assert r["probe/density/linear_r2"] > 0.5, (step, r)
    with open(straight / "metrics.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert {int(r["step"]): float(r[EFFUSION]) for r in table if r[EFFUSION]} == {s: rows[s][EFFUSION] for s in probed}
    manifest = yaml.safe_load((straight / "manifest.yaml").read_text())
    probes = manifest["contents"]["probes"]
    assert probes["tasks"] == {"effusion": "binary", "density": "regression", "noise": "binary"}
    assert probes["every"] == 2
    assert probes["samples"] == N and probes["patients"] == N // 2 and sum(probes["split"].values()) == N
    assert manifest["contents"]["final"][EFFUSION] == rows[8][EFFUSION]


def test_selection_probe_exports_the_checkpoint_with_the_best_score(straight):
    rows = probe_rows(straight)
    scores = {s: rows[s][DENSITY] for s in (2, 4, 6, 8)}  # step 0 is a baseline, never a candidate
    assert len(set(scores.values())) > 1
    best = min(scores, key=lambda s: (scores[s], s))  # the lowest error; the first of equal ones
    manifest = yaml.safe_load((straight / "manifest.yaml").read_text())
    sel = manifest["contents"]["selection"]
    assert (sel["metric"], sel["best_step"], sel["exported"]) == (DENSITY, best, "best")
    assert sel["higher_is_better"] is False
    assert sel["best_value"] == pytest.approx(scores[best])
    assert [s for s, _ in sel["evaluations"]] == [2, 4, 6, 8]
    export = json.loads((straight / "encoder" / "config.json").read_text())
    assert export["step"] == best and export["selected_by"] == DENSITY
    exported = safetensors.torch.load_file(str(straight / "encoder" / "encoder.safetensors"))
    chosen = safetensors.torch.load_file(str(straight / "checkpoints" / f"step-{best:06d}" / "target.safetensors"))
    last = safetensors.torch.load_file(str(straight / "checkpoints" / "step-000008" / "target.safetensors"))
    assert exported.keys() == {k.removeprefix("vit.") for k in chosen}
    for k, v in chosen.items():
        torch.testing.assert_close(exported[k.removeprefix("vit.")], v, rtol=0, atol=0)
    if best != 8:
        assert any(not torch.equal(chosen[k], last[k]) for k in chosen)


def test_a_resumed_run_logs_the_same_probe_scores_and_selection(straight, dataset, tmp_path, monkeypatch):
    out = tmp_path / "crashed"
    original = IJEPA.after_step

    def crash(self, step, total):
        if step == 5:  # after the probe of step 4 and its checkpoint
            raise RuntimeError("simulated crash")
        return original(self, step, total)

    monkeypatch.setattr(IJEPA, "after_step", crash)
    with pytest.raises(RuntimeError):
        run_pretrain(out, config(), data=dataset)
    monkeypatch.setattr(IJEPA, "after_step", original)
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]
    run_pretrain(out, config(), data=dataset)
    a, b = probe_rows(straight), probe_rows(out)
    assert a.keys() == b.keys()
    for step in a:
        assert a[step].keys() == b[step].keys()
        for k in a[step]:
            assert b[step][k] == pytest.approx(a[step][k], abs=1e-9), (step, k)
    sa = yaml.safe_load((straight / "manifest.yaml").read_text())["contents"]["selection"]
    sb = yaml.safe_load((out / "manifest.yaml").read_text())["contents"]["selection"]
    assert sa["best_step"] == sb["best_step"] and sa["evaluations"] == sb["evaluations"]
    ea = safetensors.torch.load_file(str(straight / "encoder" / "encoder.safetensors"))
    eb = safetensors.torch.load_file(str(out / "encoder" / "encoder.safetensors"))
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], rtol=0, atol=1e-6)


def test_identifying_columns_of_probe_labels_reach_no_output(tmp_path):
    """``--probe-labels`` with planted names, IDs, dates...: the run's files, its config, its log and the
    refusal to probe an identifying column by name hold none of their values."""
    n = 40
    images, _, _ = chests(n, seed=3)
    meta = default_meta(n)
    meta["patient_key"] = [f"p{i // 2:03d}" for i in range(n)]
    meta["source_path"] = [f"img{i:03d}.dcm" for i in range(n)]
    data = tmp_path / "data"
    write_dataset(data, images, meta)  # no label columns: the CSV brings them
    labels = tmp_path / "labels.csv"
    planted_labels(n).to_csv(labels, index=False)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "runtime": {**TINY["runtime"], "probe_every": 4}}))
    out = tmp_path / "run"
    common = ["pretrain", "--data", data, "--out", out, "--config", cfg, "--probe-labels", labels]
    common += ["--probe-key", "file=source_path", "--gpus", "0", "--verbose"]
    res = CliRunner().invoke(app, list(map(str, common)))
    assert res.exit_code == 0, res.output
    rows = probe_rows(out)
    assert rows[8] and {k.split("/")[1] for k in rows[8]} == {"finding", "site", "age"}
    assert "probe/age/linear_mae" in rows[8]  # a regression task: ages (capped at 90) from the CSV
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    left_out = manifest["contents"]["probes"]["labels_join"]["identifying_columns_left_out"]
    assert {"PatientName", "MRN", "DOB", "e-mail"} <= set(left_out)
    texts = {**_texts(out), "console": res.output}
    refused = CliRunner().invoke(app, list(map(str, [*common[:-1], "--set", "runtime.probe_tasks=[PatientName]"])))
    assert refused.exit_code == 2 and "PatientName" in refused.output
    assert yaml.safe_load((out / "manifest.yaml").read_text())["status"] == "complete"  # refused before any write
    texts["refusal"] = refused.output
    for where, text in texts.items():
        for mark in markers():
            assert mark not in text, (where, mark)
    # the probe labels are a monitor here (selection: auto): adding them is not an input of the run
    assert [r["name"] for r in manifest["inputs"]] == ["data"]
    assert pd.read_csv(out / "metrics.csv")["probe/finding/linear_auroc"].notna().sum() == 3


def test_zone_pooled_probes_read_the_features_embed_writes(straight, tmp_path):
    """runtime.probe_pooling: grid:2x2 gives the in-training probes the features `cxrjepa embed --pooling
    grid:2x2` writes for the same encoder and images."""
    import contextlib
    from dataclasses import asdict

    from cxrjepa.data.store import DatasetArtifact
    from cxrjepa.embed.api import EmbedConfig, run_embed
    from cxrjepa.embed.store import Embeddings
    from cxrjepa.models.export import load_encoder
    from cxrjepa.pretrain.data import Normalizer
    from cxrjepa.pretrain.probes import InTrainingProbe, probe_subset
    from cxrjepa.runtime import DistInfo

    images, labels, _ = chests(N)
    meta = default_meta(N)
    meta["patient_key"] = [f"p{i // 2:03d}" for i in range(N)]
    meta["effusion"] = np.where(labels, "present", "absent")
    write_dataset(tmp_path / "d32", images[:, 4:36, 4:36], meta, label_columns=["effusion"])  # the model's size
    cfg = config(**{"runtime.probe_pooling": "grid:2x2", "runtime.probe_select": "", "selection": "auto"})
    data = DatasetArtifact.open(tmp_path / "d32")
    subset = probe_subset(cfg, data, warn=False)
    probe = InTrainingProbe(subset, cfg, data, DistInfo())
    loaded = load_encoder(straight / "encoder")
    norm = Normalizer(asdict(loaded.normalization))
    feats = probe.features(loaded.model, norm, contextlib.nullcontext, torch.device("cpu"))
    emb = run_embed(tmp_path / "emb", EmbedConfig(pooling="grid:2x2"), encoder=straight / "encoder", data=data.path)
    written = Embeddings.open(emb.path).array()
    assert feats.shape == (len(subset.items), 4 * 192)
    np.testing.assert_allclose(feats, written[subset.items], atol=1e-4)
    with pytest.raises(Exception, match="runtime.probe_pooling"):
        config(**{"runtime.probe_pooling": "cls"})
    # zones change the scores that choose the exported encoder: with selection: probe, a new run
    assert config().science() != config(**{"runtime.probe_pooling": "grid:2x2"}).science()
    auto = {"selection": "auto"}
    assert config(**auto).science() == config(**auto, **{"runtime.probe_pooling": "grid:2x2"}).science()
