"""The report finds the artifacts behind the ones it is given, and says what it could not find."""

from __future__ import annotations

import shutil

import pytest
import yaml

from cxrjepa.core.artifact import begin
from cxrjepa.core.errors import ArtifactError
from cxrjepa.report.lineage import collect
from tests.report_chain import bare_artifact


def _chain(root, names=("a", "b")):
    ds = root / "dataset"
    bare_artifact(ds, "dataset")
    probes = []
    for n in names:
        run = root / f"run-{n}"
        bare_artifact(run, "run", {"dataset": ds})
        emb = root / f"emb-{n}"
        bare_artifact(emb, "embeddings", {"dataset": ds, "run": run})
        probe = root / f"probe-{n}"
        bare_artifact(probe, "probe", {"embeddings": emb})
        probes.append(probe)
    return ds, probes


def test_a_probe_alone_leads_to_its_embeddings_run_and_dataset(tmp_path):
    ds, probes = _chain(tmp_path, ("a",))
    lin = collect([probes[0]])
    assert sorted(n.kind for n in lin.nodes) == ["dataset", "embeddings", "probe", "run"]
    assert [n.given for n in lin.nodes if n.kind == "probe"] == [True]
    assert not lin.notes
    (v,) = lin.variants
    assert v.run.name == "run-a" and v.dataset.path == ds
    assert [p.name for p in v.probes] == ["probe-a"] and [e.name for e in v.embeddings] == ["emb-a"]


def test_two_probes_make_two_variants_in_the_given_order_sharing_one_dataset(tmp_path):
    _, probes = _chain(tmp_path, ("a", "b"))
    lin = collect([probes[1], probes[0]])
    assert [v.label for v in lin.variants] == ["run-b", "run-a"]
    assert len({v.color for v in lin.variants}) == 2
    assert len(lin.datasets()) == 1  # the shared dataset is one node, not two
    assert lin.variants[0].dataset is lin.variants[1].dataset


def test_runs_given_directly_are_variants_too(tmp_path):
    _chain(tmp_path, ("a", "b"))
    lin = collect([tmp_path / "run-a", tmp_path / "run-b", tmp_path / "probe-a"])
    assert [v.label for v in lin.variants] == ["run-a", "run-b"]
    assert [p.name for p in lin.variants[0].probes] == ["probe-a"] and not lin.variants[1].probes


def test_a_missing_upstream_artifact_becomes_a_note_not_an_error(tmp_path):
    _, probes = _chain(tmp_path, ("a",))
    shutil.rmtree(tmp_path / "run-a")
    lin = collect([probes[0]])
    assert "run" not in {n.kind for n in lin.nodes}
    assert any("run-a" in n and "not found" in n for n in lin.notes)
    emb = next(n for n in lin.nodes if n.kind == "embeddings")
    assert {e.name: e.status for e in emb.inputs}["run"] == "missing"
    # the variant falls back to the embeddings, and still knows its dataset
    (v,) = lin.variants
    assert v.run is None and v.dataset is not None


def test_a_partial_upstream_artifact_is_not_read(tmp_path):
    _, probes = _chain(tmp_path, ("a",))
    b = begin(tmp_path / "run-a", "run", {"other": 1}, force=True)  # restarted: partial manifest
    assert not b.skipped
    lin = collect([probes[0]])
    assert "run" not in {n.kind for n in lin.nodes}
    assert any("incomplete" in n for n in lin.notes)


def test_a_chain_moved_as_a_whole_is_found_by_sibling_name_and_fingerprint(tmp_path):
    _, probes = _chain(tmp_path / "old", ("a",))
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    shutil.rmtree(tmp_path / "old")
    lin = collect([tmp_path / "new" / "probe-a"])
    assert sorted(n.kind for n in lin.nodes) == ["dataset", "embeddings", "probe", "run"]
    assert all(str(n.path).startswith(str(tmp_path / "new")) for n in lin.nodes)
    assert not lin.notes


def test_a_changed_upstream_artifact_is_used_with_a_warning(tmp_path):
    ds, probes = _chain(tmp_path, ("a",))
    m = yaml.safe_load((ds / "manifest.yaml").read_text())
    m["content_fingerprint"] = "sha256:" + "0" * 32
    (ds / "manifest.yaml").write_text(yaml.safe_dump(m))
    lin = collect([probes[0]])
    assert "dataset" in {n.kind for n in lin.nodes}
    assert any("has changed" in n for n in lin.notes)


def test_a_folder_that_is_not_an_artifact_is_refused_in_one_sentence(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ArtifactError, match="not .* artifact"):
        collect([tmp_path / "plain"])
    with pytest.raises(ArtifactError, match="does not exist"):
        collect([tmp_path / "nowhere"])


def test_artifacts_with_the_same_folder_name_get_distinct_labels(tmp_path):
    for exp in ("exp1", "exp2"):
        _chain(tmp_path / exp, ("a",))
    lin = collect([tmp_path / "exp1" / "probe-a", tmp_path / "exp2" / "probe-a"])
    labels = [v.label for v in lin.variants]
    assert labels == ["exp1/run-a", "exp2/run-a"]
