from __future__ import annotations

import pytest
import yaml

from cxrjepa.core.artifact import (
    ALGORITHM_CHANGED,
    COMPLETE,
    PARAMS_CHANGED,
    PARTIAL,
    begin,
    compute_fingerprint,
    input_refs,
    open_artifact,
    plan_artifact,
    read_manifest,
)
from cxrjepa.core.errors import EXIT_FAILURE, EXIT_USAGE, ArtifactError, UsageError
from cxrjepa.core.fingerprint import fingerprint_path, hash_obj


def _make(path, params=None, inputs=()):
    b = begin(path, "dataset", params or {"size": 64}, inputs)
    (path / "data.txt").write_text("x")
    b.counts["samples"] = 3
    b.contents["file"] = "data.txt"
    return b.finish()


def test_manifest_fields_and_status(tmp_path):
    out = tmp_path / "ds"
    b = begin(out, "dataset", {"size": 64}, [])
    partial = read_manifest(out)
    assert partial["status"] == PARTIAL and partial["kind"] == "dataset"
    b.counts["samples"] = 3
    art = b.finish()
    m = read_manifest(out)
    assert m["status"] == COMPLETE
    assert m["schema"].startswith("cxrjepa.artifact/")
    assert m["params"] == {"size": 64}
    assert m["counts"] == {"samples": 3}
    for key in ("command", "cxrjepa", "python", "host", "packages", "devices"):
        assert key in m["producer"]
    assert "torch" in m["producer"]["packages"]
    assert m["fingerprint"] == compute_fingerprint("dataset", {"size": 64}, [])
    assert m["content_fingerprint"].startswith("sha256:")
    assert art.manifest == m
    assert not list(out.glob(".*.tmp"))  # atomic write left no temporary file


def test_skip_resume_overwrite(tmp_path):
    out = tmp_path / "ds"
    _make(out)
    assert begin(out, "dataset", {"size": 64}).skipped
    assert begin(out, "dataset", {"size": 64}, force=True).action == "overwrite"
    _make(out)
    b = begin(out, "dataset", {"size": 128})  # changed params: starts over
    assert b.action == "overwrite" and not (out / "data.txt").exists()
    assert begin(out, "dataset", {"size": 128}).resumed  # partial with same fingerprint
    with pytest.raises(UsageError, match="--force"):
        _make(out, {"size": 128})
        begin(out, "dataset", {"size": 32}, overwrite=False)


def test_refuses_foreign_folders(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(UsageError) as exc:
        begin(out, "dataset", {})
    assert exc.value.exit_code == EXIT_USAGE
    assert (out / "precious.txt").exists()
    with pytest.raises(UsageError, match="not a cxrjepa artifact"):
        begin(out, "dataset", {}, force=True)
    assert (out / "precious.txt").exists()


def test_dry_run_writes_nothing(tmp_path):
    out = tmp_path / "ds"
    b = begin(out, "dataset", {"size": 64}, dry_run=True)
    assert b.action == "create" and not out.exists()


def test_readers_refuse_with_one_sentence(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist; run 'cxrjepa ingest' first"):
        open_artifact(tmp_path / "nope", "dataset")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="no manifest.yaml"):
        open_artifact(empty, "dataset")
    out = tmp_path / "ds"
    begin(out, "dataset", {})
    with pytest.raises(ArtifactError, match="incomplete .* rerun 'cxrjepa ingest'") as exc:
        open_artifact(out, "dataset")
    assert exc.value.exit_code == EXIT_FAILURE
    _make(out)
    with pytest.raises(ArtifactError, match="is a dataset artifact, not a run"):
        open_artifact(out, "run")
    (out / "manifest.yaml").write_text("{{{ not yaml")
    with pytest.raises(ArtifactError, match="corrupt"):
        open_artifact(out, "dataset")
    (out / "manifest.yaml").write_text(yaml.safe_dump({"hello": 1}))
    with pytest.raises(ArtifactError, match="corrupt"):
        open_artifact(out, "dataset")


def test_fingerprint_tracks_params_and_inputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"1")
    refs = input_refs({"src": [src], "labels": None})
    assert [r["name"] for r in refs] == ["src[0]"] and refs[0]["kind"] == "raw"
    fp1 = compute_fingerprint("dataset", {"size": 64}, refs)
    assert fp1 == compute_fingerprint("dataset", {"size": 64}, input_refs({"src": [src]}))
    assert fp1 != compute_fingerprint("dataset", {"size": 65}, refs)
    before = fingerprint_path(src)
    (src / "b.dcm").write_bytes(b"2")
    assert fingerprint_path(src) != before
    assert compute_fingerprint("dataset", {"size": 64}, input_refs({"src": [src]})) != fp1
    # an artifact input is fingerprinted by its content fingerprint
    art = _make(tmp_path / "ds")
    ref = input_refs({"data": tmp_path / "ds"})[0]
    assert ref["kind"] == "dataset" and ref["fingerprint"] == art.content_fingerprint
    assert hash_obj({"a": 1, "b": 2}) == hash_obj({"b": 2, "a": 1})


def test_manifests_get_the_umask_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        _make(tmp_path / "ds")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "ds" / "manifest.yaml").stat().st_mode)
    assert mode == 0o644  # colleagues can read a shared dataset's manifest (mkstemp alone gives 0600)


def test_a_changed_algorithm_version_makes_an_artifact_stale(tmp_path):
    out = tmp_path / "ds"
    b = begin(out, "dataset", {"size": 64}, version=3)
    b.finish()
    m = read_manifest(out)
    assert m["algorithm_version"] == 3 and m["fingerprint"] == compute_fingerprint("dataset", {"size": 64}, [], 3)
    assert compute_fingerprint("dataset", {"size": 64}, [], 3) != compute_fingerprint("dataset", {"size": 64}, [], 4)
    assert begin(out, "dataset", {"size": 64}, version=3).skipped
    plan = plan_artifact(out, "dataset", {"size": 64}, [], version=4)
    assert plan.action == "overwrite" and plan.reason == f"{ALGORITHM_CHANGED} (version 3 -> 4)"
    assert plan_artifact(out, "dataset", {"size": 32}, [], version=4).reason == PARAMS_CHANGED  # settings changed too
    b = begin(out, "dataset", {"size": 64}, version=4)
    assert b.action == "overwrite" and read_manifest(out)["status"] == PARTIAL
    with pytest.raises(UsageError, match="algorithm changed"):
        b.finish()
        begin(out, "dataset", {"size": 64}, version=5, overwrite=False)


def test_artifacts_made_before_versions_were_recorded_are_stale_for_that_reason(tmp_path):
    out = tmp_path / "ds"
    _make(out)
    m = yaml.safe_load((out / "manifest.yaml").read_text())
    del m["algorithm_version"]
    m["fingerprint"] = compute_fingerprint("dataset", {"size": 64}, [], None)  # how fingerprints were computed before
    (out / "manifest.yaml").write_text(yaml.safe_dump(m))
    plan = plan_artifact(out, "dataset", {"size": 64}, [])
    assert plan.action == "overwrite" and plan.reason == f"{ALGORITHM_CHANGED} (version unrecorded -> 1)"
