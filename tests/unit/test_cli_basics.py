from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrjepa import __version__
from cxrjepa.cli.app import app
from cxrjepa.core.artifact import begin

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["ingest", "pretrain", "embed", "probe", "report", "run", "doctor", "inspect", "demo-data"]


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd):
    """--help shows the command's usage line and the start of its own description."""
    import typer

    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0
    assert f"Usage: cxrjepa {cmd} [OPTIONS]" in res.stdout
    described = typer.main.get_command(app).commands[cmd].help
    assert described and described[:40] in res.stdout


def test_every_command_is_registered():
    import typer

    assert set(COMMANDS) <= set(typer.main.get_command(app).commands)


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_run_on_a_recipe_says_to_use_pretrain(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)
    res = runner.invoke(app, ["run", f"recipes/{recipe}"])
    assert res.exit_code == 2
    want = (
        f"error: 'recipes/{recipe}' is a pretrain recipe, not a pipeline; use it with cxrjepa pretrain --config "
        f"recipes/{recipe}"
    )
    assert res.stderr.strip() == want


def test_inspect_table_and_json(tmp_path):
    b = begin(tmp_path / "ds", "dataset", {"size": 64})
    b.counts["samples"] = 5
    b.finish()
    res = runner.invoke(app, ["inspect", str(tmp_path / "ds"), "--json"])
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["kind"] == "dataset" and data["status"] == "complete" and data["counts"]["samples"] == 5
    res = runner.invoke(app, ["inspect", str(tmp_path / "ds")])
    assert res.exit_code == 0 and "samples" in res.stdout and "complete" in res.stdout


def test_inspect_refuses_non_artifacts_in_one_sentence(tmp_path):
    res = runner.invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 1
    assert "is not a cxrjepa artifact" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_run_usage_errors_exit_2(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.stderr
    res = runner.invoke(app, ["run"])
    assert res.exit_code == 2


def test_run_force_takes_optional_stage_ids(tmp_path, monkeypatch):
    seen = {}

    def fake_run_pipeline(path, **kwargs):
        from cxrjepa.pipeline.runner import PipelineResult

        seen.update(kwargs)
        return PipelineResult("p", str(tmp_path), kwargs["dry_run"])

    monkeypatch.setattr("cxrjepa.pipeline.runner.run_pipeline", fake_run_pipeline)
    p = tmp_path / "p.yaml"
    p.write_text("stages: {}\n")
    assert runner.invoke(app, ["run", str(p), "--force"]).exit_code == 0 and seen["force"] is True
    assert runner.invoke(app, ["run", str(p), "--force", "embed", "probe"]).exit_code == 0
    assert seen["force"] == ["embed", "probe"]
    assert runner.invoke(app, ["run", str(p)]).exit_code == 0 and seen["force"] is False
    res = runner.invoke(app, ["run", str(p), "embed"])
    assert res.exit_code == 2 and "--force" in res.stderr


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_cli_makes_idle_openmp_threads_sleep_unless_told_otherwise(given, expected):
    """Before torch is imported, the CLI sets OMP_WAIT_POLICY=PASSIVE, and a user's own setting wins."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import sys, os, cxrjepa.cli.app; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == expected
