"""Pretraining: I-JEPA (and future objectives) on a dataset artifact, producing a run artifact.

``run_pretrain(out, PretrainConfig(...), data=DATASET)`` is the stage's Python API; ``cxrjepa pretrain`` its
command. See docs/pretrain.md. The names below are imported on first use, so ``cxrjepa.pretrain.layout`` (the
run artifact's reader) stays importable without torch.
"""

import importlib

_WHERE = {
    "DryRun": "cxrjepa.pretrain.api",
    "PretrainOptions": "cxrjepa.pretrain.api",
    "run_pretrain": "cxrjepa.pretrain.api",
    "PretrainConfig": "cxrjepa.pretrain.config",
    "RuntimeConfig": "cxrjepa.pretrain.config",
    "TrainConfig": "cxrjepa.pretrain.config",
}

__all__ = ["DryRun", "PretrainConfig", "PretrainOptions", "RuntimeConfig", "TrainConfig", "run_pretrain"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'cxrjepa.pretrain' has no attribute {name!r}")
