"""The ``cxrjepa pretrain`` command line the integration tests run in a subprocess (CPU, one process)."""

from __future__ import annotations

import sys
from pathlib import Path


def pretrain_command(dataset: Path, out: Path, cfg_file: Path, *extra: str) -> list[str]:
    """``python -m cxrjepa pretrain --data DATASET --out OUT --config CFG --gpus 0 EXTRA...``."""
    return [
        sys.executable,
        "-m",
        "cxrjepa",
        "pretrain",
        "--data",
        str(dataset),
        "--out",
        str(out),
        "--config",
        str(cfg_file),
        "--gpus",
        "0",
        *extra,
    ]
