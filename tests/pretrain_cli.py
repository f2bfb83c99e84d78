"""The ``cxrjepa pretrain`` command line the integration tests run (in the CLI runner or a subprocess; CPU),
and the interrupted run the resume tests start from."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path


def pretrain_args(dataset: Path, out: Path, cfg_file: Path, *extra: str) -> list[str]:
    """``pretrain --data DATASET --out OUT --config CFG --gpus 0 EXTRA...`` (for the CLI runner)."""
    return ["pretrain", "--data", str(dataset), "--out", str(out), "--config", str(cfg_file), "--gpus", "0", *extra]


def pretrain_command(dataset: Path, out: Path, cfg_file: Path, *extra: str) -> list[str]:
    """``python -m cxrjepa pretrain --data DATASET --out OUT --config CFG --gpus 0 EXTRA...``."""
    return [sys.executable, "-m", "cxrjepa", *pretrain_args(dataset, out, cfg_file, *extra)]


def kill_after_first_checkpoint(cmd: list[str], env: dict, out: Path, timeout: float = 300.0) -> None:
    """Run ``cmd`` and SIGKILL it as soon as its first checkpoint (step 2) is complete: an interrupted run."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoints" / "step-000002" / "state.json").exists():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
