"""cxrjepa probe end to end on real embeddings of a small synthetic dataset with a visible finding."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.config import to_dict
from cxrjepa.core.errors import UsageError
from cxrjepa.core.schema import SchemaError
from cxrjepa.data.store import default_meta, write_dataset
from cxrjepa.embed.api import EmbedConfig, run_embed
from cxrjepa.probe.api import ProbeConfig, run_probe
from cxrjepa.probe.layout import Probe
from tests.report_chain import unread_fields

N = 160
FAST = dict(
    bootstrap=100, fewshot=[10.0, 100.0], fewshot_seeds=2, knn_k=[5, 10], c_grid=[0.01, 1.0], alpha_grid=[1.0, 100.0]
)


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    """160 images of 80 patients; the finding is a bright blob, so any encoder should see it."""
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    finding = rng.random(N) < 0.4
    images = rng.integers(0, 120, (N, 32, 32), dtype=np.uint8)
    images[finding, 8:24, 8:24] = 250
    meta = default_meta(N)
    meta["patient_key"] = [f"p{i // 2:04d}" for i in range(N)]
    meta["finding"] = np.where(finding, "PNEUMONIA", "NORMAL")
    meta["sex"] = np.where(rng.random(N) < 0.5, "F", "M")
    meta["age"] = rng.uniform(1, 90, N).round(1)
    meta["view"] = np.where(np.arange(N) % 4 == 0, "AP", "PA")
    meta["labels"] = [("effusion|" if f else "") + ("nodule" if i % 3 == 0 else "") for i, f in enumerate(finding)]
    meta["labels"] = meta["labels"].str.strip("|").replace("", "none")
    write_dataset(root / "ds", images, meta, label_columns=["finding"])
    art = run_embed(root / "emb", EmbedConfig(last4=True), encoder="random:tiny", data=root / "ds")
    return root, art.path, meta


def test_probe_outputs_follow_the_schema(emb, tmp_path):
    root, emb_path, meta = emb
    art = run_probe(tmp_path / "probe", ProbeConfig(**FAST), embeddings=emb_path)
    m = json.loads((art.path / "metrics.json").read_text())
    assert yaml.safe_load((art.path / "metrics.yaml").read_text()) == m
    assert m["encoder"]["fingerprint"].startswith("sha256:")
    t = m["tasks"]["finding"]
    assert t["type"] == "binary" and t["classes"] == ["NORMAL", "PNEUMONIA"] and t["positive"] == "PNEUMONIA"
    assert sum(t["n"].values()) == N
    for kind in ("linear", "knn"):
        p = t["probes"][kind]
        for name in ("auroc", "auprc", "macro_f1", "accuracy", "balanced_accuracy"):
            v = p["metrics"][name]
            assert v["ci"][0] <= v["value"] <= v["ci"][1]
        assert set(p["per_class"]) == {"NORMAL", "PNEUMONIA"} and "f1" in p["per_class"]["PNEUMONIA"]
        assert "PNEUMONIA" in p["curves"]["roc"] and p["curves"]["confusion"]["labels"] == ["NORMAL", "PNEUMONIA"]
        assert np.sum(p["curves"]["confusion"]["matrix"]) == t["n"]["test"]
    assert t["probes"]["linear"]["params"]["C"] in (0.01, 1.0) and t["probes"]["knn"]["params"]["k"] in (5, 10)
    # the blob is easy: both probes find it
    assert t["probes"]["linear"]["metrics"]["auroc"]["value"] > 0.9
    assert t["probes"]["knn"]["metrics"]["auroc"]["value"] > 0.8
    fs = t["fewshot"]["linear"]
    assert [f["fraction"] for f in fs] == [0.1, 1.0] and fs[0]["seeds"] == 2 and "std" in fs[0]["metrics"]["auroc"]
    sg = t["subgroups"]
    assert set(sg) >= {"sex", "age_band", "view"}
    assert set(sg["sex"]["groups"]) == {"F", "M"} and "value" in sg["sex"]["gap"]
    assert sum(1 for a in sg.values() if a.get("flagged")) == 1
    assert m["attributes"]["sex"]["metrics"]["auroc"]["value"] is not None
    assert {"mae", "r2"} <= set(m["attributes"]["age"]["metrics"])

    pred = pd.read_parquet(art.path / "predictions.parquet")
    assert {"sample_id", "task", "probe", "split", "target", "prediction", "score_NORMAL", "score_PNEUMONIA"} <= set(
        pred.columns
    )
    assert len(pred) == 2 * N and set(pred["split"]) == {"train", "val", "test"}
    lin = pred[pred.probe == "linear"].set_index("sample_id")
    assert (lin.loc[meta["sample_id"], "target"].to_numpy() == meta["finding"].to_numpy()).all()
    split = pd.read_csv(art.path / "split.csv")
    assert list(split.columns) == ["sample_id", "patient_key", "split"]
    assert split.groupby("patient_key")["split"].nunique().max() == 1
    assert art.manifest["counts"]["test"] == t["n"]["test"]


def test_split_is_reused_across_reruns_and_from_another_probe(emb, tmp_path):
    root, emb_path, _ = emb
    first = run_probe(tmp_path / "p", ProbeConfig(**FAST), embeddings=emb_path)
    split1 = (first.path / "split.csv").read_text()
    # other settings (another seed would give another split) -> the artifact is redone, the split kept
    again = run_probe(tmp_path / "p", ProbeConfig(**{**FAST, "seed": 9}), embeddings=emb_path)
    assert again.fingerprint != first.fingerprint
    assert (again.path / "split.csv").read_text() == split1
    assert again.manifest["contents"]["split"]["source"] == "file"
    other = run_probe(
        tmp_path / "q", ProbeConfig(**{**FAST, "seed": 9}), embeddings=emb_path, split=first.path / "split.csv"
    )
    assert (other.path / "split.csv").read_text() == split1
    fresh = run_probe(tmp_path / "r", ProbeConfig(**{**FAST, "seed": 9}), embeddings=emb_path)
    assert (fresh.path / "split.csv").read_text() != split1


def test_labels_csv_regression_and_multilabel_tasks(emb, tmp_path):
    root, emb_path, meta = emb
    csv = tmp_path / "labels.csv"
    meta[["sample_id", "age", "labels"]].rename(columns={"sample_id": "id"}).to_csv(csv, index=False)
    cfg = ProbeConfig(**{**FAST, "key": "id=sample_id", "tasks": ["age", "labels"], "attributes": False})
    art = run_probe(tmp_path / "p", cfg, embeddings=emb_path, labels=csv)
    m = json.loads((art.path / "metrics.json").read_text())
    assert m["tasks"]["age"]["type"] == "regression" and set(m["tasks"]["age"]["probes"]["linear"]["metrics"]) == {
        "mae",
        "r2",
    }
    ml = m["tasks"]["labels"]
    assert ml["type"] == "multilabel" and ml["classes"] == ["effusion", "nodule", "none"]
    assert ml["probes"]["linear"]["per_class"]["effusion"]["auroc"]["value"] > 0.8
    assert art.manifest["contents"]["labels_join"]["matched_samples"] == N
    pred = pd.read_parquet(art.path / "predictions.parquet")
    assert pred[pred.task == "age"]["prediction_value"].notna().all()


def test_robustness_reembeds_corrupted_test_images(emb, tmp_path):
    root, emb_path, _ = emb
    cfg = ProbeConfig(
        **{
            **FAST,
            "corruptions": ["blur", "noise"],
            "severities": [1, 3],
            "fewshot": [],
            "subgroups": [],
            "attributes": False,
            "probes": ["linear"],
        }
    )
    art = run_probe(tmp_path / "p", cfg, embeddings=emb_path)
    rob = json.loads((art.path / "metrics.json").read_text())["tasks"]["finding"]["robustness"]
    lin = json.loads((art.path / "metrics.json").read_text())["tasks"]["finding"]["probes"]["linear"]["metrics"]
    assert rob["clean"]["auroc"]["value"] == lin["auroc"]["value"]
    assert [r["severity"] for r in rob["blur"]] == [1, 3] and "ci" in rob["noise"][0]["metrics"]["auroc"]
    values = [r["metrics"]["auroc"]["value"] for r in rob["noise"]]
    assert all(v is not None for v in values)


def test_usage_errors_are_one_sentence(emb, tmp_path):
    root, emb_path, _ = emb
    with pytest.raises(UsageError, match="no column 'nope'"):
        run_probe(tmp_path / "a", ProbeConfig(tasks=["nope"]), embeddings=emb_path)
    with pytest.raises(UsageError, match="Unknown corruption"):
        run_probe(tmp_path / "b", ProbeConfig(corruptions=["fog"]), embeddings=emb_path)


def test_cli_probe_json_prints_metrics(emb, tmp_path):
    root, emb_path, _ = emb
    res = CliRunner().invoke(
        app,
        [
            "probe",
            "--embeddings",
            str(emb_path),
            "--out",
            str(tmp_path / "p"),
            "--json",
            "--quiet",
            "--features",
            "features_last4",
            "--fewshot",
            "none",
            "--bootstrap",
            "50",
            "--set",
            "probes=[linear]",
            "--set",
            "subgroups=[]",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)
    assert m["embeddings"]["features"] == "features_last4" and "fewshot" not in m["tasks"]["finding"]
    assert set(m["tasks"]["finding"]["probes"]) == {"linear"}
    res = CliRunner().invoke(app, ["probe", "--embeddings", str(tmp_path / "missing"), "--out", str(tmp_path / "q")])
    assert res.exit_code == 1 and "cxrjepa embed" in res.stderr


def test_knn_handles_regression_and_multilabel(emb, tmp_path):
    root, emb_path, meta = emb
    csv = tmp_path / "labels.csv"
    meta[["sample_id", "age", "labels"]].to_csv(csv, index=False)
    cfg = ProbeConfig(
        **{**FAST, "tasks": ["age", "labels"], "attributes": False, "fewshot": [], "subgroups": [], "probes": ["knn"]}
    )
    m = json.loads((run_probe(tmp_path / "p", cfg, embeddings=emb_path, labels=csv).path / "metrics.json").read_text())
    assert m["tasks"]["age"]["probes"]["knn"]["metrics"]["mae"]["value"] > 0
    assert m["tasks"]["labels"]["probes"]["knn"]["metrics"]["auroc"]["value"] > 0.7


def test_the_report_reads_back_everything_the_probe_writes(emb, tmp_path):
    """Schema round trip: every field of metrics.json and of the manifest's contents, as the probe stage wrote
    them, comes back unchanged through the typed reader the report uses, and the report shows those values."""
    from cxrjepa.report.config import ReportConfig
    from cxrjepa.report.doc import Note, Table
    from cxrjepa.report.lineage import collect
    from cxrjepa.report.sections import probes
    from cxrjepa.report.sections.base import Context

    root, emb_path, _ = emb
    cfg = ProbeConfig(**{**FAST, "corruptions": ["noise"], "severities": [1]})
    art = run_probe(tmp_path / "p", cfg, embeddings=emb_path)
    raw = json.loads((art.path / "metrics.json").read_text())
    assert {"tasks", "attributes", "encoder", "embeddings", "bootstrap"} <= set(raw)
    assert {"probes", "fewshot", "subgroups", "robustness"} <= set(raw["tasks"]["finding"])
    probe = Probe.open(art.path)
    assert unread_fields(raw, to_dict(probe.metrics)) == []
    assert unread_fields(art.manifest["contents"], to_dict(probe.contents)) == []

    sec = probes.build(Context(collect([art.path]), ReportConfig()))
    assert not [b.text for b in sec.blocks if isinstance(b, Note) and b.level == "warn"]
    table = next(b for b in sec.blocks if isinstance(b, Table) and "AUROC" in b.columns)
    row = next(r for r in table.rows if r[1].text == "linear")
    auroc = raw["tasks"]["finding"]["probes"]["linear"]["metrics"]["auroc"]
    assert row[table.columns.index("AUROC")].text == f"{auroc['value']:.3f} ({auroc['ci'][0]:.3f}–{auroc['ci'][1]:.3f})"

    # a field renamed on the writer's side is an error naming it and the stage, not a section left out
    raw["tasks"]["finding"]["probes"]["linear"]["scores"] = raw["tasks"]["finding"]["probes"]["linear"].pop("metrics")
    (art.path / "metrics.json").write_text(json.dumps(raw))
    with pytest.raises(
        SchemaError, match=r"'tasks\.finding\.probes\.linear\.metrics' is missing; rerun 'cxrjepa probe'"
    ):
        probes.build(Context(collect([art.path]), ReportConfig()))


def test_a_new_algorithm_version_of_the_probe_redoes_its_artifacts(emb, tmp_path, monkeypatch):
    import cxrjepa.probe.api as probe_api

    root, emb_path, _ = emb
    cfg = ProbeConfig(**{**FAST, "fewshot": [], "subgroups": [], "attributes": False, "probes": ["linear"]})
    first = run_probe(tmp_path / "p", cfg, embeddings=emb_path)
    assert first.manifest["algorithm_version"] == probe_api.ALGORITHM_VERSION
    assert run_probe(tmp_path / "p", cfg, embeddings=emb_path).manifest == first.manifest  # up to date
    monkeypatch.setattr(probe_api, "ALGORITHM_VERSION", probe_api.ALGORITHM_VERSION + 1)
    plan = run_probe(tmp_path / "p", cfg, embeddings=emb_path, dry_run=True)
    assert plan["action"] == "overwrite"
    again = run_probe(tmp_path / "p", cfg, embeddings=emb_path)
    assert again.manifest["algorithm_version"] == probe_api.ALGORITHM_VERSION and again.fingerprint != first.fingerprint
