"""CUDA paths (skipped without a GPU): bf16 autocast, fused AdamW, per-block compile, MFU / memory monitors,
multi-GPU DDP and FSDP2 against one GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml

from cxrjepa.core.config import load_config
from cxrjepa.data.store import write_dataset
from cxrjepa.models.export import load_encoder
from cxrjepa.pretrain import PretrainConfig, PretrainOptions, run_pretrain
from cxrjepa.pretrain.monitors import MetricsLog

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.gpu

SMALL = {
    "model": {"size": "small", "patch_size": 16, "image_size": 64, "layers": 4},
    "ijepa": {"predictor": {"depth": 2, "width": 128}, "masks": {"min_context": 4}},
    "train": {"batch_size": 16, "steps": 6},
    "runtime": {"workers": 2, "log_every": 2, "monitor_every": 3, "checkpoint_every": 3, "monitor_batch": 16},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    images = (rng.random((64, 80, 80)) * 100).astype(np.uint8)
    images[:, 20:60, 20:60] += 120
    path = tmp_path_factory.mktemp("gpu") / "data"
    write_dataset(path, images)
    return path


def test_bf16_run_on_one_gpu_reports_mfu_and_memory(data, tmp_path):
    cfg = load_config(PretrainConfig, layers=[SMALL])
    run = run_pretrain(tmp_path / "run", cfg, data=data, options=PretrainOptions(gpus=1))
    rows = MetricsLog.read(run.path)
    last = rows[-1]
    assert np.isfinite(last["loss"]) and 0 < last["mfu"] < 1 and last["gpu_mem_gb"] > 0
    assert run.manifest["options"]["device"] == "cuda"
    enc = load_encoder(run.path)  # exported fp32 weights, loadable on the CPU
    assert all(v.dtype == torch.float32 for v in enc.model.state_dict().values())


def test_compiled_blocks_train_the_same_model(data, tmp_path):
    cfg = load_config(PretrainConfig, layers=[SMALL], overrides=["runtime.compile=true"])
    run = run_pretrain(tmp_path / "compiled", cfg, data=data, options=PretrainOptions(gpus=1))
    ref = run_pretrain(
        tmp_path / "eager", load_config(PretrainConfig, layers=[SMALL]), data=data, options=PretrainOptions(gpus=1)
    )
    a = safetensors.torch.load_file(str(run.path / "encoder" / "encoder.safetensors"))
    b = safetensors.torch.load_file(str(ref.path / "encoder" / "encoder.safetensors"))
    assert a.keys() == b.keys()  # compiling per block keeps parameter names
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 5e-2  # bf16 kernels differ slightly


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_match_one_gpu(data, tmp_path, strategy):
    sets = ["train.precision=fp32", "runtime.tf32=false", "runtime.deterministic=true"]
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(SMALL))
    one = run_pretrain(
        tmp_path / "one",
        load_config(PretrainConfig, files=[cfg_file], overrides=sets),
        data=data,
        options=PretrainOptions(gpus=1),
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    cmd = [
        sys.executable,
        "-m",
        "cxrjepa",
        "pretrain",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "two"),
        "--config",
        str(cfg_file),
        "--gpus",
        "2",
        "--json",
        "--set",
        f"runtime.strategy={strategy}",
    ]
    for s in sets:
        cmd += ["--set", s]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["counts"]["steps"] == 6
    for name in ("encoder", "predictor", "target"):
        a = safetensors.torch.load_file(str(one.path / "checkpoints/step-000006" / f"{name}.safetensors"))
        b = safetensors.torch.load_file(str(tmp_path / "two/checkpoints/step-000006" / f"{name}.safetensors"))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4, name
