"""A small quickstart chain through the CLI: every stage runs, every manifest is complete and consistent,
a second run skips everything, a dry run writes nothing, a broken manifest is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.artifact import read_manifest

runner = CliRunner()

KINDS = {
    "demo": "demo",
    "dataset": "dataset",
    "run": "run",
    "embeddings": "embeddings",
    "probe": "probe",
    "report": "report",
}


def _pipeline(tmp_path: Path) -> Path:
    pipe = {
        "name": "mini",
        "out": str(tmp_path / "runs"),
        "stages": {
            "demo": {"stage": "demo-data", "params": {"n": 40, "min_size": 96, "max_size": 160, "seed": 1}},
            "dataset": {
                "stage": "ingest",
                "inputs": {"sources": ["@demo/dicom"], "labels": "@demo/labels.csv"},
                "params": {"size": 32},
                "options": {"workers": 1},
            },
            "run": {
                "stage": "pretrain",
                "inputs": {"data": "@dataset"},
                "params": {
                    "model": {"size": "tiny", "patch_size": 8, "image_size": 32},
                    "ijepa": {"predictor": {"depth": 1, "width": 48}},
                    "train": {"batch_size": 8, "steps": 4},
                    "runtime": {"workers": 0, "monitor_every": 2, "monitor_batch": 16, "checkpoint_every": 2},
                },
                "options": {"gpus": 0},
            },
            "embeddings": {
                "stage": "embed",
                "inputs": {"encoder": "@run", "data": "@dataset"},
                "options": {"workers": 0},
            },
            "probe": {
                "stage": "probe",
                "inputs": {"embeddings": "@embeddings"},
                "params": {"tasks": ["effusion"], "bootstrap": 20, "fewshot": [], "probes": ["linear"]},
            },
            "report": {
                "stage": "report",
                "inputs": {"artifacts": ["@probe"]},
                "params": {"map_method": "pca", "patch_images": 1, "retrieval_queries": 1, "sample_images": 4},
                "options": {"device": "cpu"},
            },
        },
    }
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(pipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    p = _pipeline(tmp)
    first = runner.invoke(app, ["run", str(p), "--json", "--quiet"])
    return tmp, p, first


def test_every_stage_runs_and_every_manifest_is_complete(chain):
    tmp, _, first = chain
    assert first.exit_code == 0, first.stderr
    res = json.loads(first.stdout)
    assert [s["action"] for s in res["stages"]] == ["run"] * 6
    manifests = {sid: read_manifest(tmp / "runs" / sid) for sid in KINDS}
    for sid, kind in KINDS.items():
        m = manifests[sid]
        assert m["status"] == "complete" and m["kind"] == kind, sid
        assert m["content_fingerprint"] and m["fingerprint"]
        assert m["producer"]["cxrjepa"]

    # lineage: each stage records its upstream artifact's content fingerprint
    def fp_of(sid, name):
        return next(i["fingerprint"] for i in manifests[sid]["inputs"] if i["name"] == name)

    assert fp_of("dataset", "labels") and manifests["dataset"]["counts"]["samples"] == 40
    assert fp_of("run", "data") == manifests["dataset"]["content_fingerprint"]
    assert fp_of("embeddings", "data") == manifests["dataset"]["content_fingerprint"]
    assert fp_of("embeddings", "encoder") == manifests["run"]["content_fingerprint"]
    assert fp_of("probe", "embeddings") == manifests["embeddings"]["content_fingerprint"]
    assert manifests["run"]["counts"]["steps"] == 4
    assert (tmp / "runs" / "run" / "encoder" / "encoder.safetensors").is_file()
    assert (tmp / "runs" / "report" / "index.html").is_file()
    metrics = json.loads((tmp / "runs" / "probe" / "metrics.json").read_text())
    auroc = metrics["tasks"]["effusion"]["probes"]["linear"]["metrics"]["auroc"]["value"]
    assert 0.0 <= auroc <= 1.0


def test_every_reader_reads_back_what_its_stage_wrote(chain):
    """Each kind's reader (its layout's schema) holds every field its real stage wrote, unchanged."""
    from cxrjepa.core.config import to_dict
    from cxrjepa.data.store import DatasetArtifact
    from cxrjepa.embed.store import Embeddings
    from cxrjepa.pretrain.layout import Run
    from cxrjepa.probe.layout import Probe
    from tests.report_chain import unread_fields

    tmp, _, _ = chain
    readers = {"dataset": DatasetArtifact, "run": Run, "embeddings": Embeddings, "probe": Probe}
    for sid, cls in readers.items():
        reader = cls.open(tmp / "runs" / sid)
        manifest = read_manifest(tmp / "runs" / sid)
        assert manifest["algorithm_version"] == 1
        assert unread_fields(manifest["contents"], to_dict(reader.contents)) == [], sid
    run = Run.open(tmp / "runs" / "run")
    assert run.counts.steps == run.counts.planned_steps == 4 and run.encoder_weights.is_file()
    assert run.encoder_config()["embed_dim"] == run.contents.encoder.embed_dim
    assert len(run.metrics().frame) >= 2
    probe = Probe.open(tmp / "runs" / "probe")
    raw = json.loads((tmp / "runs" / "probe" / "metrics.json").read_text())
    assert unread_fields(raw, to_dict(probe.metrics)) == []


def test_second_run_skips_everything(chain):
    tmp, p, _ = chain
    before = {sid: (tmp / "runs" / sid / "manifest.yaml").read_bytes() for sid in KINDS}
    again = runner.invoke(app, ["run", str(p), "--json", "--quiet"])
    assert again.exit_code == 0, again.stderr
    assert [s["action"] for s in json.loads(again.stdout)["stages"]] == ["skip"] * 6
    assert {sid: (tmp / "runs" / sid / "manifest.yaml").read_bytes() for sid in KINDS} == before


def test_dry_run_predicts_and_writes_nothing(chain):
    tmp, p, _ = chain
    dry = runner.invoke(app, ["run", str(p), "--dry-run", "--json", "--quiet", "--set", "probe.seed=3"])
    assert dry.exit_code == 0, dry.stderr
    actions = [s["action"] for s in json.loads(dry.stdout)["stages"]]
    assert actions == ["would skip"] * 4 + ["would run"] * 2
    assert read_manifest(tmp / "runs" / "probe")["params"]["seed"] == 0
    fresh = tmp / "elsewhere"
    dry = runner.invoke(app, ["run", str(p), "--dry-run", "--out", str(fresh), "--quiet"])
    assert dry.exit_code == 0 and not fresh.exists()


def test_partial_or_corrupt_input_is_refused(chain, tmp_path):
    tmp, _, _ = chain
    import shutil

    ds = tmp_path / "dataset"
    shutil.copytree(tmp / "runs" / "dataset", ds)
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    m["status"] = "partial"
    (ds / "manifest.yaml").write_text(yaml.safe_dump(m))
    res = runner.invoke(
        app, ["embed", "--encoder", str(tmp / "runs" / "run"), "--data", str(ds), "--out", str(tmp_path / "e")]
    )
    assert res.exit_code == 1
    assert "incomplete" in res.stderr and "cxrjepa ingest" in res.stderr and "Traceback" not in res.stderr
    (ds / "manifest.yaml").write_text("kind: [unclosed")
    res = runner.invoke(app, ["pretrain", "--data", str(ds), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "corrupt" in res.stderr and "Traceback" not in res.stderr
