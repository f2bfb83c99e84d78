"""The pipeline runner with two small fake stages (the real chain is tested in tests/integration)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from cxrjepa.core.artifact import begin, input_refs, read_manifest
from cxrjepa.core.errors import ConfigError
from cxrjepa.pipeline import stages
from cxrjepa.pipeline.runner import run_pipeline

CALLS: list[str] = []


@dataclass
class MakeConfig:
    n: int = 3


@dataclass
class SumConfig:
    scale: int = 1


def run_make(out, config, *, src=None, force=False):
    b = begin(
        out,
        "dataset",
        config,
        input_refs({"src": src}),
        force=force,
        version=sys.modules["cxrjepa_fake_stages"].ALGORITHM_VERSION,
    )
    if b.skipped:
        return b.existing_artifact()
    CALLS.append("make")
    (Path(out) / "values.txt").write_text(" ".join(str(i) for i in range(config.n)))
    b.counts.update({"samples": config.n, "rejected": 1 if config.n > 5 else 0})
    return b.finish()


def run_sum(out, config, *, data, workers=1, force=False):
    b = begin(
        out,
        "embeddings",
        config,
        input_refs({"data": data}),
        options={"workers": workers},
        force=force,
        version=sys.modules["cxrjepa_fake_stages"].ALGORITHM_VERSION,
    )
    if b.skipped:
        return b.existing_artifact()
    CALLS.append("sum")
    values = [int(v) for v in (Path(data) / "values.txt").read_text().split()]
    b.counts["total"] = sum(values) * config.scale
    return b.finish()


@pytest.fixture
def fake_stages(monkeypatch):
    mod = types.ModuleType("cxrjepa_fake_stages")
    mod.MakeConfig, mod.SumConfig, mod.run_make, mod.run_sum = MakeConfig, SumConfig, run_make, run_sum
    mod.ALGORITHM_VERSION = 1
    monkeypatch.setitem(sys.modules, "cxrjepa_fake_stages", mod)
    monkeypatch.setitem(
        stages.STAGES, "make", stages.StageDef("make", "dataset", mod.__name__, "MakeConfig", "run_make", ("src",))
    )
    monkeypatch.setitem(
        stages.STAGES,
        "sum",
        stages.StageDef("sum", "embeddings", mod.__name__, "SumConfig", "run_sum", ("data",), ("data",)),
    )
    CALLS.clear()


def _pipeline(tmp_path, body=None):
    src = tmp_path / "raw"
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_text("a")
    p = tmp_path / "p.yaml"
    p.write_text(
        body
        or f"""
name: toy
out: {tmp_path / "runs"}
stages:
  data:
    stage: make
    inputs: {{src: {src}}}
    params: {{n: 4}}
  total:
    stage: sum
    inputs: {{data: "@data"}}
    options: {{workers: 2}}
"""
    )
    return p


def test_runs_then_skips(tmp_path, fake_stages):
    p = _pipeline(tmp_path)
    res = run_pipeline(p)
    assert [s.action for s in res.steps] == ["run", "run"] and res.exit_code == 0
    m = read_manifest(tmp_path / "runs" / "total")
    assert m["counts"]["total"] == 6 and m["options"] == {"workers": 2}
    assert m["inputs"][0]["fingerprint"] == read_manifest(tmp_path / "runs" / "data")["content_fingerprint"]
    res = run_pipeline(p)
    assert [s.action for s in res.steps] == ["skip", "skip"] and CALLS == ["make", "sum"]


def test_changed_params_rerun_downstream(tmp_path, fake_stages):
    p = _pipeline(tmp_path)
    run_pipeline(p)
    CALLS.clear()
    res = run_pipeline(p, sets=["data.n=5"])
    assert [s.action for s in res.steps] == ["run", "run"] and CALLS == ["make", "sum"]
    assert read_manifest(tmp_path / "runs" / "total")["counts"]["total"] == 10
    CALLS.clear()
    res = run_pipeline(p, sets=["data.n=5", "total.scale=2"])
    assert [s.action for s in res.steps] == ["skip", "run"] and CALLS == ["sum"]


def test_force_and_dry_run(tmp_path, fake_stages):
    p = _pipeline(tmp_path)
    dry = run_pipeline(p, dry_run=True)
    assert [s.action for s in dry.steps] == ["would run", "would run"]
    assert not (tmp_path / "runs").exists() and CALLS == []
    run_pipeline(p)
    CALLS.clear()
    res = run_pipeline(p, force=["total"])
    assert [s.action for s in res.steps] == ["skip", "run"] and CALLS == ["sum"]
    res = run_pipeline(p, force=True)
    assert [s.action for s in res.steps] == ["run", "run"]
    dry = run_pipeline(p, dry_run=True, sets=["total.scale=3"])
    assert [s.action for s in dry.steps] == ["would skip", "would run"]
    assert read_manifest(tmp_path / "runs" / "total")["params"]["scale"] == 1


def test_rejections_give_exit_3(tmp_path, fake_stages):
    res = run_pipeline(_pipeline(tmp_path), sets=["data.n=6"])
    assert res.exit_code == 3
    assert run_pipeline(_pipeline(tmp_path), sets=["data.n=6"]).exit_code == 3  # also when skipped


def test_bad_pipelines(tmp_path, fake_stages):
    with pytest.raises(ConfigError, match="unknown stage 'dat'.*Did you mean 'data'"):
        run_pipeline(_pipeline(tmp_path), sets=["dat.n=1"])
    with pytest.raises(ConfigError, match="Unknown setting 'm'"):
        run_pipeline(_pipeline(tmp_path), sets=["data.m=1"])
    body = "stages:\n  total: {stage: sum, inputs: {data: '@data'}}\n  data: {stage: make}\n"
    with pytest.raises(ConfigError, match="stages must come after their inputs"):
        run_pipeline(_pipeline(tmp_path, body))
    with pytest.raises(ConfigError, match="unknown stage 'mak'.*Did you mean 'make'"):
        run_pipeline(_pipeline(tmp_path, "stages:\n  a: {stage: mak}\n"))
    with pytest.raises(ConfigError, match="needs the input 'data'"):
        run_pipeline(_pipeline(tmp_path, "stages:\n  a: {stage: sum}\n"))


def test_a_stage_whose_algorithm_changed_runs_again_and_says_why(tmp_path, fake_stages):
    p = _pipeline(tmp_path)
    run_pipeline(p)
    CALLS.clear()
    sys.modules["cxrjepa_fake_stages"].ALGORITHM_VERSION = 2  # a fix to the stage's code, bumped deliberately
    dry = run_pipeline(p, dry_run=True)
    assert [(s.action, s.reason) for s in dry.steps] == [
        ("would run", "the stage's algorithm changed (version 1 -> 2)"),
        ("would run", "its input 'data' will be remade"),
    ]
    assert read_manifest(tmp_path / "runs" / "data")["algorithm_version"] == 1  # the dry run wrote nothing
    res = run_pipeline(p)
    assert [s.action for s in res.steps] == ["run", "run"] and CALLS == ["make", "sum"]
    assert read_manifest(tmp_path / "runs" / "data")["algorithm_version"] == 2
    assert [s.action for s in run_pipeline(p).steps] == ["skip", "skip"]


def test_every_stage_declares_its_algorithm_version_and_plans_like_it_runs():
    import inspect

    for name, sdef in stages.STAGES.items():
        mod = __import__(sdef.module, fromlist=["_"])
        assert isinstance(mod.ALGORITHM_VERSION, int) and mod.ALGORITHM_VERSION >= 1, name
        assert "version=ALGORITHM_VERSION" in inspect.getsource(mod), name  # the stage's begin() uses it
    assert stages.STAGES["pretrain"].planner == "plan_pretrain"


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "pipelines").glob("*.yaml")))
def test_pipelines_folder_holds_only_pipelines(name):
    """pipelines/ holds pipeline files (stages of known commands); their recipe files exist in recipes/."""
    from cxrjepa.pipeline.spec import load_pipeline
    from cxrjepa.pipeline.stages import STAGES

    pipe = load_pipeline(ROOT / "pipelines" / name, known_stages=list(STAGES))
    assert pipe.stages
    for spec in pipe.stages:
        for cfg in spec.config:
            assert cfg.resolve().parent == ROOT / "recipes" and cfg.is_file()


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_recipes_folder_holds_only_pretrain_recipes(name):
    from cxrjepa.core.config import load_config, read_yaml
    from cxrjepa.pipeline.spec import is_recipe, load_pipeline
    from cxrjepa.pretrain.config import PretrainConfig

    path = ROOT / "recipes" / name
    assert is_recipe(read_yaml(path))
    load_config(PretrainConfig, files=[path]).validate()
    with pytest.raises(
        ConfigError, match="is a pretrain recipe, not a pipeline; use it with cxrjepa pretrain --config"
    ):
        load_pipeline(path)


def test_a_broken_pipeline_is_not_mistaken_for_a_recipe(tmp_path):
    from cxrjepa.pipeline.spec import load_pipeline

    (tmp_path / "p.yaml").write_text("name: x\nstage: []\n")
    with pytest.raises(ConfigError, match="Unknown pipeline key 'stage'"):
        load_pipeline(tmp_path / "p.yaml")
