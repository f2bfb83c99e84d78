"""``cxrjepa run`` asks each stage for its plan: a pretraining run stopped by ``max_steps`` continues to its full
step count once the option is removed (it is not "up to date"), and what was made from it is made again."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from cxrjepa.cli.app import app
from cxrjepa.core.artifact import read_manifest
from cxrjepa.data.store import write_dataset
from cxrjepa.pretrain.api import CONTINUE_EARLY_STOP
from tests.integration.test_pretrain_run import TINY, phantoms

runner = CliRunner()


def _pipeline(path, root, dataset, max_steps=None):
    run = {"stage": "pretrain", "inputs": {"data": str(dataset)}, "params": TINY, "options": {"gpus": 0}}
    if max_steps is not None:
        run["options"]["max_steps"] = max_steps
    pipe = {
        "name": "early",
        "out": str(root),
        "stages": {
            "run": run,
            "emb": {"stage": "embed", "inputs": {"encoder": "@run", "data": str(dataset)}, "options": {"workers": 0}},
        },
    }
    path.write_text(yaml.safe_dump(pipe, sort_keys=False))
    return path


def _run(*args):
    res = runner.invoke(app, ["run", *map(str, args), "--json", "--quiet"])
    assert res.exit_code == 0, res.stderr
    return {s["id"]: s for s in json.loads(res.stdout)["stages"]}


def test_a_run_stopped_by_max_steps_continues_when_the_option_is_removed(tmp_path):
    dataset = tmp_path / "data"
    write_dataset(dataset, phantoms(48, 40))
    root = tmp_path / "runs"
    pipe = _pipeline(tmp_path / "p.yaml", root, dataset, max_steps=4)
    first = _run(pipe)
    assert [first[s]["action"] for s in ("run", "emb")] == ["run", "run"]
    m = read_manifest(root / "run")
    assert m["counts"]["steps"] == 4 and m["counts"]["planned_steps"] == 8 and m["contents"]["stopped_early"]
    assert [s["action"] for s in _run(pipe).values()] == ["skip", "skip"]  # the same options: nothing to do

    _pipeline(pipe, root, dataset)  # max_steps removed
    dry = runner.invoke(app, ["run", str(pipe), "--dry-run", "--json", "--quiet"])
    plan = {s["id"]: s for s in json.loads(dry.stdout)["stages"]}
    assert plan["run"]["action"] == "would run" and plan["run"]["reason"] == CONTINUE_EARLY_STOP
    assert plan["emb"]["action"] == "would run"
    assert read_manifest(root / "run")["counts"]["steps"] == 4  # the dry run changed nothing

    second = _run(pipe)
    assert second["run"]["action"] == "run" and second["run"]["reason"] == CONTINUE_EARLY_STOP
    m = read_manifest(root / "run")
    assert m["counts"]["steps"] == 8 and not m["contents"]["stopped_early"]
    assert m["created"] == read_manifest(root / "run")["created"]
    assert {p.name for p in (root / "run" / "checkpoints").iterdir()} >= {"step-000008"}
    # the embeddings were made again, from the fully trained encoder
    assert second["emb"]["action"] == "run"
    emb = read_manifest(root / "emb")
    assert next(i["fingerprint"] for i in emb["inputs"] if i["name"] == "encoder") == m["content_fingerprint"]
    assert [s["action"] for s in _run(pipe).values()] == ["skip", "skip"]
