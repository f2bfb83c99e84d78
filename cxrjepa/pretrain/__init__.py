"""Pretraining: I-JEPA (and future objectives) on a dataset artifact, producing a run artifact.

``run_pretrain(out, PretrainConfig(...), data=DATASET)`` is the stage's Python API; ``cxrjepa pretrain`` its
command. See docs/pretrain.md.
"""

from cxrjepa.pretrain.api import DryRun, PretrainOptions, run_pretrain
from cxrjepa.pretrain.config import PretrainConfig, RuntimeConfig, TrainConfig

__all__ = ["DryRun", "PretrainConfig", "PretrainOptions", "RuntimeConfig", "TrainConfig", "run_pretrain"]
