"""The distributed runtime: process plans, the torchrun command, launch specs, the worker entry, shards,
stop signals (a real launch: tests/integration/test_runtime_launch.py)."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import torch

from cxrjepa.cli.worker import main as worker_main
from cxrjepa.core.config import dump_yaml, load_config
from cxrjepa.core.errors import UsageError
from cxrjepa.pretrain import PretrainConfig
from cxrjepa.runtime import DistInfo, LaunchSpec, ProcessPlan, StopSignals, launch_command, plan_processes, shard


def fail(spec: LaunchSpec) -> None:
    raise UsageError(f"rank {os.environ.get('RANK')} was told to fail.")


def test_launch_command_single_and_multi_node():
    cmd = launch_command("/x/launch.json", ProcessPlan(4))
    assert cmd[0] == sys.executable
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "--log-dir=/x/torchrun",
        "-m",
        "cxrjepa.cli.worker",
        "/x/launch.json",
    ]
    cmd = launch_command("S", ProcessPlan(8, cuda=True, nnodes=2), node_rank=1, rdzv_endpoint="node0:29500")
    assert "--nnodes=2" in cmd and "--node-rank=1" in cmd and "--rdzv-endpoint=node0:29500" in cmd
    assert "--standalone" not in cmd
    with pytest.raises(UsageError, match="rdzv-endpoint"):
        launch_command("S", ProcessPlan(8, nnodes=2))
    with pytest.raises(UsageError, match="node-rank"):
        launch_command("S", ProcessPlan(8, nnodes=2), node_rank=2, rdzv_endpoint="node0:29500")


def test_process_plans_are_checked_unless_only_printed():
    assert plan_processes(0, 3) == ProcessPlan(3, cuda=False)
    assert plan_processes(0, None, nnodes=2).world == 2
    with pytest.raises(UsageError):
        plan_processes(0, 0)
    with pytest.raises(UsageError, match="equal --gpus"):
        plan_processes(2, 3, check=False)
    # a login node plans the GPUs of a compute node without looking for them
    plan = plan_processes(8, None, nnodes=2, check=False)
    assert (plan.nproc, plan.cuda, plan.world, plan.launches) == (8, True, 16, True)
    assert plan.describe() == "8 GPUs per node x 2 nodes"
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            plan_processes(8, None)
        with pytest.raises(UsageError, match="--device cpu"):
            ProcessPlan(2, cuda=True).check_devices("--device cuda", cpu_hint="--device cpu")


def test_shards_cover_the_units_once_in_contiguous_order():
    units = list(range(3, 14))
    parts = [shard(units, r, 4) for r in range(4)]
    assert [len(p) for p in parts] == [3, 3, 3, 2]
    assert sum(parts, []) == units
    assert shard([5], 0, 3) == [5] and shard([5], 2, 3) == []
    with pytest.raises(ValueError):
        shard(units, 4, 4)


def test_launch_spec_carries_the_resolved_config(tmp_path):
    cfg = load_config(PretrainConfig, overrides=["optim.lr=3e-4", "model.size=small", "train.steps=7"])
    spec = LaunchSpec("pretrain", "mod:fn", {"out": "/o", "options": {"gpus": 0}}, dump_yaml(cfg), quiet=True)
    path = spec.write(tmp_path)
    assert path == tmp_path / "launch.json" and (tmp_path / "config.yaml").is_file()
    back = LaunchSpec.read(path)
    assert back == spec and back.folder == tmp_path
    again = load_config(PretrainConfig, files=[back.config_path])
    assert again == cfg and again.science() == cfg.science()  # the workers train what the launcher resolved
    (tmp_path / "launch.json").write_text("{trunc")
    with pytest.raises(UsageError, match="launch spec"):
        LaunchSpec.read(path)


def test_worker_reports_errors_in_one_sentence(tmp_path, capsys):
    assert worker_main([]) == 2
    assert worker_main([str(tmp_path / "missing.json")]) == 2
    path = LaunchSpec("test", f"{__name__}:fail", {}, "a: 1\n").write(tmp_path / "spec")
    os.environ["RANK"] = "0"
    try:
        assert worker_main([str(path)]) == 2
    finally:
        del os.environ["RANK"]
    err = capsys.readouterr().err
    assert "error: rank 0 was told to fail." in err and "Traceback" not in err


def test_a_stop_signal_is_noted_and_the_handlers_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert not stop.requested(DistInfo(), sync_point=False)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested(DistInfo(), sync_point=False)  # one process stops at once
    assert signal.getsignal(signal.SIGTERM) is before
