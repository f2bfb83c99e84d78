"""benchmarks/gpu_check.sh's pieces that run without a GPU: the results writer (step records -> gpu.md / gpu.json),
the pretrain benchmark's objective selection, and the peer comparison's batches."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


results = load("gpu_results")

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.integration.test_pretrain_gpu" name="test_bf16_run" time="3.1"/>
<testcase classname="tests.integration.test_pretrain_gpu" name="test_compiled" time="40.2">
  <failure message="assert 0.2 &lt; 0.05">trace</failure></testcase>
<testcase classname="tests.integration.test_pretrain_gpu" name="test_two_gpus[ddp]" time="0.0">
  <skipped message="needs 2 GPUs"/></testcase>
</testsuite></testsuites>
"""


def pretrain_json(peer: dict, objectives: dict, missing: list[str] | None = None) -> dict:
    gpu = {"batch": 256, "image_size": 224, "steps": 20, "objectives": objectives, "lightly": peer}
    if missing:
        gpu["not_registered"] = missing
    return {"cuda": "NVIDIA H200", "gpu_vitb16": gpu}


def work_folder(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "machine.tsv").write_text(
        "date\t2026-12-03 12:00 UTC\nGPU\tNVIDIA H200, 143771 MiB\ndriver\t580.159.03\ncommit\tabc123\n"
    )
    steps = [
        ("pretrain", "pretrain", "ok", "0", "130", "240", ""),
        ("embed", "embed", "failed", "1", "12", "120", ""),
        ("salt", "salt", "timeout", "124", "150", "150", ""),
        ("tests", "tests", "failed", "1", "95", "240", ""),
        ("objectives", "pretrain", "skipped", "", "0", "150", "lejepa, jepa-sigreg: not in this checkout"),
    ]
    (work / "steps.tsv").write_text("".join("\t".join(s) + "\n" for s in steps))
    ijepa = {
        "recipe": "cxr-ijepa-vitb16.yaml",
        "eager": {"images_per_s": 1234.5, "step_s": 0.20737, "tflop_per_step": 30.0, "mfu": 0.412},
        "compiled": {"error": "OutOfMemoryError: CUDA out of memory"},
    }
    peer = {"images_per_s": 1000.0, "step_s": 0.256, "cxrjepa_ratio": {"eager": 1.2345}}
    (work / "pretrain.json").write_text(json.dumps(pretrain_json(peer, {"ijepa": ijepa}, ["lejepa"])))
    (work / "embed.log").write_text("".join(f"line {i}\n" for i in range(100)) + "RuntimeError: embed broke\n")
    (work / "salt.log").write_text("")
    (work / "tests.xml").write_text(JUNIT)
    return work


def test_results_file_holds_every_step_and_figure(tmp_path):
    work = work_folder(tmp_path)
    out = tmp_path / "results"
    assert results.main([str(work), "--out", str(out)]) == 0
    md = (out / "gpu.md").read_text()

    # every step is a row, failures and time-outs included, with the machine above them
    assert "| GPU | NVIDIA H200, 143771 MiB |" in md
    assert "| embed | **failed** (exit 1) | 12 | 120 |  |" in md
    assert "| salt | **timed out** after 150 s | 150 | 150 |  |" in md
    assert "| objectives | skipped | 0 | 150 | lejepa, jepa-sigreg: not in this checkout |" in md
    # figures: one row per objective and mode, a failed measurement shown as such, the peer and the ratio
    assert "| ijepa | eager | 256 | 1,234.5 | 41.2% | 30.00 | 207.4 | cxr-ijepa-vitb16.yaml |" in md
    assert "| ijepa | compiled | 256 | failed: OutOfMemoryError: CUDA out of memory |" in md
    assert "| lightly I-JEPA (peer) | eager | 256 | 1,000.0 | - | - | 256.0 |" in md
    assert "eager **1.23x**" in md
    assert "Not registered in this checkout (not timed): lejepa." in md
    # pytest's counts and the tests that did not pass
    assert "**1 passed, 1 failed, 0 errors, 1 skipped.**" in md
    assert "`tests.integration.test_pretrain_gpu::test_compiled`" in md
    # steps that left no figures say why, and a failed step's log tail is shown (its end, not its start)
    assert "No figures (**failed** (exit 1); see Failures)." in md
    assert "No GPU figures (**timed out** after 150 s; see Failures)." in md
    failures = md.split("## Failures", 1)[1]
    assert "RuntimeError: embed broke" in failures and "line 99" in failures
    assert "line 5\n" not in failures
    assert "### salt: **timed out** after 150 s" in failures

    data = json.loads((out / "gpu.json").read_text())
    assert data["figures"]["tests"]["failed"] == 1 and data["figures"]["tests"]["passed"] == 1
    assert data["figures"]["pretrain"]["pretrain"]["gpu_vitb16"]["lightly"]["images_per_s"] == 1000.0
    assert [s["status"] for s in data["steps"]] == ["ok", "failed", "timeout", "failed", "skipped"]


def test_missing_peer_is_a_row_not_a_failure(tmp_path):
    work = work_folder(tmp_path)
    peer = {"error": "peer not installed (lightly: pip install -e '.[bench]')"}
    ijepa = {"recipe": "r", "eager": {"images_per_s": 10.0, "step_s": 1.0, "tflop_per_step": 1.0}}
    (work / "pretrain.json").write_text(json.dumps(pretrain_json(peer, {"ijepa": ijepa})))
    md, _ = results.render(work)
    assert "| lightly I-JEPA (peer) | eager | 256 | peer not installed (lightly: pip install -e '.[bench]') |" in md
    assert "| ijepa | eager | 256 | 10.0 | - | 1.00 | 1,000.0 | r |" in md  # no MFU on an unknown GPU
    assert "Not registered" not in md


def test_writer_refuses_a_folder_that_is_not_a_check(tmp_path, capsys):
    assert results.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "not a gpu_check.sh work folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "steps.tsv").write_text("pretrain\tpretrain\tdone\t0\t1\t2\t\n")
    with pytest.raises(ValueError, match="status 'done'"):
        results.read_steps(tmp_path)


def test_check_script_refuses_unknown_arguments():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    bad = subprocess.run(["bash", str(script), "--steps", "3"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown argument '--steps'" in bad.stderr
    help_ = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--dry-run" in help_.stdout


@pytest.fixture(scope="module")
def pretrain():
    return load("pretrain")


def test_objective_selection_names_what_this_checkout_lacks(pretrain):
    assert pretrain.select_objectives(["ijepa", "no-such"], if_registered=True) == (["ijepa"], ["no-such"])
    from cxrjepa.pretrain.objectives import OBJECTIVES

    registered = ", ".join(sorted(OBJECTIVES))
    assert {"ijepa", "lejepa", "jepa-sigreg"} <= set(OBJECTIVES)
    with pytest.raises(ValueError, match=f"Unknown objective no-such; registered: {re.escape(registered)} "):
        pretrain.select_objectives(["ijepa", "no-such"], if_registered=False)
    cfg, source = pretrain.objective_config("pixel", "train.batch_size=64")
    assert (cfg.objective, cfg.model.size, cfg.model.image_size, cfg.train.batch_size) == ("pixel", "base", 224, 64)
    assert source == "cxr-ijepa-vitb16.yaml with objective=pixel"
    cfg, source = pretrain.objective_config("ijepa")
    assert source == "cxr-ijepa-vitb16.yaml" and cfg.train.batch_size == 256


def test_peer_gets_the_batches_cxrjepa_trains_on(pretrain, tmp_path):
    """lightly's step is fed the images and masks of cxrjepa's I-JEPA step: the comparison is like for like."""
    from cxrjepa.pretrain.masks import block_masks
    from cxrjepa.pretrain.objectives.ijepa import IJEPA

    cfg = pretrain.recipe("tiny")
    data = pretrain.DatasetArtifact.open(pretrain.phantom_dataset(tmp_path / "d", 12, 40))
    grid = cfg.model.token_grid(cfg.model.input_shape)
    cpu = torch.device("cpu")
    ours = pretrain.stream_batches(cfg, data, cpu, 3, IJEPA(cfg).masks(grid))
    peer = pretrain.stream_batches(cfg, data, cpu, 3, block_masks(cfg.ijepa.masks, grid))
    assert len(ours) == 3 and [b["step"] for b in ours] == [0, 1, 2]
    for a, b in zip(ours, peer):
        assert a["images"].shape == (8, 1, 32, 32) and a["images"].dtype == torch.float32
        for key in ("images", "context", "targets"):
            assert torch.equal(a[key], b[key])
    assert not torch.equal(ours[0]["context"], ours[1]["context"])  # a new mask draw per step


def test_a_dry_run_shows_no_figures(tmp_path):
    """--dry-run records every step as skipped: its collect-only test report and empty outputs are not figures."""
    work = work_folder(tmp_path)
    steps = [
        (n, k, "skipped", "", "0", "240", "dry run: checked") for n, k in (("pretrain", "pretrain"), ("tests", "tests"))
    ]
    (work / "steps.tsv").write_text("".join("\t".join(s) + "\n" for s in steps))
    md, data = results.render(work)
    assert "No test report (skipped: dry run: checked)." in md
    assert "passed" not in md and "| ijepa |" not in md and "## Failures" not in md
    assert data["figures"]["tests"] is None
