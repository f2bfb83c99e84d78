"""The per-kind layouts: importable without torch, and their checks name the field and the stage to rerun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cxrjepa
from cxrjepa.core.artifact import Artifact
from cxrjepa.core.schema import SchemaError, check_written
from cxrjepa.pretrain.layout import Run, RunContents

RUN = {
    "kind": "run",
    "status": "complete",
    "counts": {"steps": 4, "planned_steps": 8},
    "contents": {
        "objective": "ijepa",
        "config": "config.yaml",
        "metrics": ["metrics.jsonl"],
        "stopped_early": True,
        "encoder": {"weights": "encoder/encoder.safetensors", "config": "encoder/config.json"},
    },
}


def test_layouts_and_schemas_import_without_torch():
    code = (
        "import sys; import cxrjepa.core.schema, cxrjepa.core.phi, cxrjepa.data.layout, cxrjepa.pretrain.layout, "
        "cxrjepa.probe.layout, cxrjepa.embed.store, cxrjepa.data.store; print('torch' in sys.modules)"
    )
    env_path = str(Path(cxrjepa.__file__).parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": env_path}, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_run_stopped_early_has_steps_to_go_up_to_the_budget_asked_for(tmp_path):
    run = Run(Artifact(tmp_path, RUN))
    assert run.steps_to_go() == 4 and run.steps_to_go(6) == 2 and run.steps_to_go(4) == 0 and run.steps_to_go(2) == 0
    done = {**RUN, "contents": {**RUN["contents"], "stopped_early": False}}
    assert Run(Artifact(tmp_path, done)).steps_to_go() == 0


def test_a_run_manifest_that_does_not_match_names_the_field_and_the_stage(tmp_path):
    bad = {**RUN, "contents": {k: v for k, v in RUN["contents"].items() if k != "stopped_early"}}
    with pytest.raises(
        SchemaError,
        match=r"manifest.yaml contents\) does not match .*'stopped_early' is missing; "
        r"rerun 'cxrjepa pretrain' with --force",
    ):
        Run(Artifact(tmp_path, bad))
    wrong = {**RUN, "counts": {"steps": "four", "planned_steps": 8}}
    with pytest.raises(SchemaError, match=r"'steps': input should be a valid integer"):
        Run(Artifact(tmp_path, wrong))
    with pytest.raises(RuntimeError, match="its own readers reject: 'encoder' is missing.*a bug in cxrjepa"):
        check_written(RunContents, {k: v for k, v in RUN["contents"].items() if k != "encoder"}, what="a run manifest")
