"""A real launch: torchrun workers start from the launch spec, a failing worker fails the launch, and the
spec's private folder is gone afterwards."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from cxrjepa.core.errors import UsageError
from cxrjepa.runtime import LaunchSpec, ProcessPlan, launch

ROOT = Path(__file__).resolve().parents[2]


def record_rank(spec: LaunchSpec) -> None:
    """The launch entry: rank 0 writes what it was given; rank 1 fails once rank 0 has written."""
    out = Path(spec.args["out"])
    if os.environ["RANK"] == "0":
        (out / "rank-0.json").write_text(
            json.dumps(
                {
                    "world": int(os.environ["WORLD_SIZE"]),
                    "args": spec.args,
                    "config": spec.config_path.read_text(),
                    "quiet": spec.quiet,
                }
            )
        )
        return
    deadline = time.time() + 120
    while not (out / "rank-0.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    raise UsageError("rank 1 was told to fail.")


def test_launched_workers_start_from_the_spec_and_leave_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the workers import this module as tests.integration...
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    spec = LaunchSpec(
        "test",
        "tests.integration.test_runtime_launch:record_rank",
        {"out": str(out), "n": [1, 2]},
        "seed: 5\n",
        quiet=True,
    )
    assert launch(spec, ProcessPlan(2)) != 0  # rank 1 failed
    seen = json.loads((out / "rank-0.json").read_text())
    assert seen == {"world": 2, "args": {"out": str(out), "n": [1, 2]}, "config": "seed: 5\n", "quiet": True}
    assert not list((tmp_path / "tmp").iterdir())  # the launch folder was removed
