"""Several processes (gloo on CPU) train exactly like one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import yaml

from cxrjepa.core.config import load_config
from cxrjepa.data.store import write_dataset
from cxrjepa.pretrain import PretrainConfig, run_pretrain
from cxrjepa.pretrain.monitors import MetricsLog

ROOT = Path(__file__).resolve().parents[2]

CONFIG = {
    "model": {"size": "tiny", "patch_size": 8, "image_size": 32, "layers": 2},
    "ijepa": {"predictor": {"depth": 1, "width": 32, "heads": 2}, "masks": {"min_context": 4}},
    "train": {"batch_size": 8, "steps": 4},
    "runtime": {"workers": 0, "log_every": 2, "monitor_every": 2, "checkpoint_every": 4, "monitor_batch": 8},
}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process reference run: (dataset, config file, run)."""
    tmp = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    images = (rng.random((24, 32, 32)) * 64).astype(np.uint8)
    images[:, 8:24, 8:24] += 128
    data = tmp / "data"
    write_dataset(data, images)
    cfg_file = tmp / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(CONFIG))
    run = tmp / "single"
    run_pretrain(run, load_config(PretrainConfig, files=[cfg_file]), data=data)
    return data, cfg_file, run


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_gloo_processes_match_one_process(single, strategy, tmp_path):
    """DDP, and FSDP2 (sharded EMA update, gathered checkpoints), on 2 CPU processes == 1 process."""
    data, cfg_file, single = single
    multi = tmp_path / "multi"
    scratch = tmp_path / "scratch"  # the launcher's temporary folder: the launch spec lives there, then goes
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)}
    env.pop("OMP_NUM_THREADS", None)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrjepa",
            "pretrain",
            "--data",
            str(data),
            "--out",
            str(multi),
            "--config",
            str(cfg_file),
            "--gpus",
            "0",
            "--nproc",
            "2",
            "--json",
            "--set",
            f"runtime.strategy={strategy}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count('"kind": "run"') == 1  # one summary: the launcher's, not one per worker
    assert "-m cxrjepa.cli.worker" in res.stderr and not list(scratch.iterdir())  # no launch folder left behind
    manifest = yaml.safe_load((multi / "manifest.yaml").read_text())
    assert manifest["status"] == "complete" and manifest["contents"]["world_size"] == 2
    assert manifest["contents"]["strategy"] == strategy
    # the same science settings give the same fingerprint whatever the process count
    assert manifest["fingerprint"] == yaml.safe_load((single / "manifest.yaml").read_text())["fingerprint"]
    for name in ("encoder", "predictor", "target"):
        a = safetensors.torch.load_file(str(single / "checkpoints/step-000004" / f"{name}.safetensors"))
        b = safetensors.torch.load_file(str(multi / "checkpoints/step-000004" / f"{name}.safetensors"))
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-5, (name, worst)
    rows = MetricsLog.read(multi)
    assert [r["step"] for r in rows] == [0, 2, 4]  # rank 0 alone wrote the metrics
    np.testing.assert_allclose(
        [r.get("loss", 0) for r in rows], [r.get("loss", 0) for r in MetricsLog.read(single)], atol=1e-5
    )
