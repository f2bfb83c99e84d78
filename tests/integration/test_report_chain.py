"""cxrjepa report end to end on a dataset -> run -> embeddings -> probe chain (two runs side by side)."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from tests.report_chain import inspect_html, shared_chain, shared_report

SECTIONS = ("summary", "provenance", "data", "pretraining", "probes", "embeddings", "features")
runner = CliRunner()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return shared_chain(tmp_path_factory)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return shared_report(tmp_path_factory)


def _page(report):
    return (report / "index.html").read_text()


def test_a_report_of_the_whole_chain_has_every_section_and_figure(full):
    manifest = yaml.safe_load((full / "manifest.yaml").read_text())
    assert manifest["kind"] == "report" and manifest["status"] == "complete"
    assert manifest["contents"]["sections"] == {s: "shown" for s in SECTIONS}
    assert manifest["counts"]["artifacts"] == 7 and manifest["counts"]["warnings"] == 0
    facts = inspect_html(_page(full))
    assert set(SECTIONS) <= facts.ids
    figures = {p.stem for p in (full / "figures").glob("*.png")}
    expected = {
        "data-counts-dataset",
        "data-age-dataset",
        "data-samples-dataset",
        "pretraining-curves",
        "probe-roc-finding",
        "probe-confusion-finding",
        "probe-fewshot-finding",
        "probe-subgroups-finding",
        "probe-robustness-finding",
        "embeddings-map",
        "patch-maps-dataset",
        "retrieval",
    }
    assert figures == expected
    assert {i["src"][:22] for i in facts.imgs} == {"data:image/png;base64,"} and len(facts.imgs) == len(expected)
    for text in (
        "Rejected inputs",
        "unsupported transfer syntax",
        "What the embeddings reveal about the patient",
        "Subgroups of finding",
        "Patients in several splits",
    ):
        assert text in facts.text
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((full / "index.html").stat().st_mode) == 0o666 & ~mask  # as any new file, not 0600
    md = (full / "summary.md").read_text()
    assert all(f"(figures/{name}.png)" in md for name in expected)
    assert "## Probes" in md and "## Pretraining" in md


def test_the_page_is_self_contained_and_structurally_sound(full):
    page = _page(full)
    facts = inspect_html(page)
    assert facts.external == []
    assert "http://" not in page and "https://" not in page
    assert facts.h1 == 1
    assert facts.imgs and all(i.get("alt", "").strip() for i in facts.imgs)
    assert not any(t in ("script", "iframe", "object", "embed", "link") for t, _ in facts.tags)


def test_two_runs_and_their_probes_are_shown_side_by_side(full):
    page = _page(full)
    facts = inspect_html(page)
    # the at-a-glance table has one row per run with its headline probe metric
    summary = page.split('id="summary"')[1].split("</section>")[0]
    assert summary.count("run-ijepa") >= 1 and summary.count("run-salt") >= 1
    assert "finding: AUROC" in summary
    # the probe table has a row per run and probe kind
    probes = page.split('id="probes"')[1].split("</section>")[0]
    for run in ("run-ijepa", "run-salt"):
        for kind in ("linear", "knn"):
            assert f'{run}</td><td class="nw">{kind}' in probes
    # the paired differences: run-ijepa's linear AUROC minus run-salt's, on the same test patients
    from cxrjepa.probe.compare import compare_probes
    from cxrjepa.probe.layout import Probe

    root = full.parent / "report-chain"
    d = compare_probes(Probe.open(root / "probe-ijepa"), Probe.open(root / "probe-salt"), "finding", "linear")
    preds = [pd.read_parquet(root / f"probe-{o}" / "predictions.parquet") for o in ("ijepa", "salt")]
    aurocs = []
    for p in preds:
        t = p[(p.probe == "linear") & (p.split == "test")].sort_values("sample_id")
        aurocs.append(roc_auc_score(t.target == "PNEUMONIA", t.score_PNEUMONIA))
    assert abs(d["auroc"]["value"] - (aurocs[0] - aurocs[1])) < 1e-6
    assert "run-ijepa minus it (AUROC)" in probes
    value = f"{d['auroc']['value']:+.3f} ({d['auroc']['ci'][0]:+.3f} to {d['auroc']['ci'][1]:+.3f})"
    assert f'run-salt</td><td class="nw">linear</td><td class="num nw">{value}</td>' in probes
    # every comparative figure names both runs in its description
    for name in ("pretraining-curves", "probe-roc-finding", "embeddings-map", "patch-maps-dataset", "retrieval"):
        alt = next(
            i["alt"]
            for t, i in facts.tags
            if t == "img"
            and f'id="fig-{name}"' in page
            and i is not None
            and page.find(i["alt"][:40]) > page.find(f'id="fig-{name}"')
        )
        assert "run-ijepa" in alt and "run-salt" in alt, name


def test_the_cli_writes_the_report_and_a_rerun_is_up_to_date(chain, tmp_path):
    out = tmp_path / "r"
    args = [
        "report",
        str(chain.probes[0]),
        "--out",
        str(out),
        "--set",
        "map_method=pca",
        "--set",
        "sample_images=4",
        "--set",
        "retrieval_queries=2",
        "--set",
        "patch_images=0",
        "--title",
        "Pneumonia probe",
        "--device",
        "cpu",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    page = _page(out)
    assert "<title>Pneumonia probe</title>" in page and "<h1>Pneumonia probe</h1>" in page
    # one probe given: its embeddings, run and dataset were found through the manifests
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    assert m["counts"]["artifacts"] == 4 and m["contents"]["variants"] == ["run-ijepa"]
    assert [i["kind"] for i in m["inputs"]] == ["probe"]
    assert "the first two principal components" in page
    assert "Patch-feature maps are turned off" in page
    before = (out / "index.html").stat().st_mtime_ns
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["kind"] == "report"
    assert "up to date" in res.stderr
    assert (out / "index.html").stat().st_mtime_ns == before


def test_a_dataset_alone_gives_a_report_whose_other_sections_say_why_they_are_missing(chain, tmp_path):
    out = tmp_path / "r"
    res = runner.invoke(app, ["report", str(chain.dataset), "--out", str(out), "--set", "sample_images=4"])
    assert res.exit_code == 0, res.output
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    assert m["contents"]["sections"] == {
        "summary": "shown",
        "provenance": "shown",
        "data": "shown",
        "pretraining": "left out",
        "probes": "left out",
        "embeddings": "left out",
        "features": "left out",
    }
    text = inspect_html(_page(out)).text
    assert "Left out: no run artifact" in text and "Left out: no probe artifact" in text
    assert "Left out: no embeddings artifact" in text and "Left out for lack of inputs" in text


def test_a_missing_run_is_noted_and_everything_else_is_still_drawn(chain, tmp_path):
    # a copy of the probe and its embeddings whose run has gone (moved away, deleted)
    for name in ("emb-ijepa", "probe-ijepa"):
        shutil.copytree(chain.root / name, tmp_path / name)
    m = yaml.safe_load((tmp_path / "emb-ijepa" / "manifest.yaml").read_text())
    for ref in m["inputs"]:
        if ref["kind"] == "run":
            ref["path"] = str(tmp_path / "gone" / "run-ijepa")
    (tmp_path / "emb-ijepa" / "manifest.yaml").write_text(yaml.safe_dump(m))
    m = yaml.safe_load((tmp_path / "probe-ijepa" / "manifest.yaml").read_text())
    m["inputs"][0]["path"] = str(tmp_path / "emb-ijepa")
    (tmp_path / "probe-ijepa" / "manifest.yaml").write_text(yaml.safe_dump(m))
    out = tmp_path / "r"
    res = runner.invoke(
        app,
        [
            "report",
            str(tmp_path / "probe-ijepa"),
            "--out",
            str(out),
            "--set",
            "map_method=pca",
            "--set",
            "sample_images=4",
            "--set",
            "retrieval_queries=2",
        ],
    )
    assert res.exit_code == 0, res.output
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    assert m["contents"]["sections"]["pretraining"] == "left out"
    assert m["contents"]["sections"]["probes"] == "shown" and m["contents"]["sections"]["embeddings"] == "shown"
    assert any("run-ijepa" in n and "not found" in n for n in m["notes"])
    text = inspect_html(_page(out)).text
    assert "patch-feature maps need a run artifact" in text
    assert (out / "figures" / "retrieval.png").is_file()


def test_dry_run_writes_nothing_and_bad_inputs_fail_in_one_sentence(chain, tmp_path):
    res = runner.invoke(app, ["report", str(chain.probes[0]), "--out", str(tmp_path / "r"), "--dry-run", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["action"] == "create"
    assert not (tmp_path / "r").exists()
    (tmp_path / "plain").mkdir()
    res = runner.invoke(app, ["report", str(tmp_path / "plain"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "has no manifest.yaml" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["report", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "at least one artifact" in res.stderr
    res = runner.invoke(app, ["report", str(chain.probes[0]), "--out", str(tmp_path / "r"), "--set", "map_points=5"])
    assert res.exit_code == 2 and "map_points" in res.stderr
