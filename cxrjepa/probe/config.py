"""Settings of ``cxrjepa probe`` (science: they enter the probe's fingerprint) and its run options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cxrjepa.core.errors import ConfigError

#: segmentation heads, and the label value that masks use for "ignore this pixel"
HEADS = ("linear", "conv")
IGNORE = 255


@dataclass
class SegmentationConfig:
    """Settings of the segmentation probe (they enter the probe's fingerprint)."""

    #: run the segmentation probe (``--task segmentation``)
    enabled: bool = False
    #: where patch tokens come from: the embeddings' patch_tokens, the encoder (on the fly), or auto (the first available)
    source: Literal["auto", "patch_tokens", "encoder"] = "auto"
    #: heads to train: linear (1x1 convolution per patch) and conv (two convolution layers)
    heads: list[Literal["linear", "conv"]] = field(default_factory=lambda: ["linear", "conv"])
    #: training loss: cross-entropy, soft Dice over the foreground classes, or their sum
    loss: Literal["ce", "dice", "ce+dice"] = "ce"
    #: passes over the training images
    epochs: int = 40
    #: images per optimisation step
    batch_size: int = 16
    #: AdamW learning rates tried; the one with the best validation Dice is kept
    lr_grid: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1])
    weight_decay: float = 1e-4
    #: channels of the conv head's hidden layer
    hidden: int = 128

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.hidden < 1:
            raise ConfigError(
                "'segmentation.epochs', 'segmentation.batch_size' and 'segmentation.hidden' must be at least 1."
            )
        if not self.lr_grid or any(lr <= 0 for lr in self.lr_grid):
            raise ConfigError("'segmentation.lr_grid' must hold positive learning rates.")
        if not self.heads or any(h not in HEADS for h in self.heads):
            raise ConfigError("'segmentation.heads' must name linear, conv or both.")


@dataclass
class ProbeConfig:
    #: label columns to probe (index columns, or CSV columns with --labels); empty = every label column
    tasks: list[str] = field(default_factory=list)
    #: task type per column (binary, multiclass, multilabel, regression); others are detected
    task_types: dict[str, str] = field(default_factory=dict)
    #: positive class per binary column (default: the class that is not 'normal'/'0'/'no'..., else the second)
    positive: dict[str, str] = field(default_factory=dict)
    #: join key for --labels: a column in both the CSV and the index, or CSVCOL=INDEXCOL
    key: str = "sample_id"
    #: which embeddings array to probe: features or features_last4
    features: str = "features"
    #: train / val / test fractions of patients
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    seed: int = 0
    probes: list[Literal["linear", "knn"]] = field(default_factory=lambda: ["linear", "knn"])
    #: inverse regularisation strengths tried for logistic regression (chosen on validation)
    c_grid: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    #: ridge strengths tried for regression tasks
    alpha_grid: list[float] = field(default_factory=lambda: [1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4])
    #: neighbour counts tried for kNN
    knn_k: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    #: patient-level bootstrap resamples for 95 % intervals (0 = none)
    bootstrap: int = 1000
    #: few-shot label fractions in percent of the training labels per class (empty = no few-shot)
    fewshot: list[float] = field(default_factory=lambda: [1.0, 5.0, 10.0, 50.0, 100.0])
    fewshot_seeds: int = 5
    #: subgroup attributes (index columns; age_band is derived from age)
    subgroups: list[str] = field(default_factory=lambda: ["sex", "age_band", "view", "site"])
    #: lower bounds of the age bands after 0 (years): 0-17, 18-39, 40-59, 60-79, 80+
    age_bands: list[float] = field(default_factory=lambda: [18.0, 40.0, 60.0, 80.0])
    #: smallest test group that gets metrics
    min_group: int = 10
    #: predict sex and age from the embeddings
    attributes: bool = True
    #: corruptions of test images (blur, contrast, noise, speckle), re-embedded with the same encoder
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=lambda: [1, 2, 3])
    #: separator of labels in multi-label text columns
    multilabel_sep: str = "|"
    #: dense probes on patch tokens against the dataset's masks (``--task segmentation``; docs/segmentation.md)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)

    def validate(self) -> None:
        f = self.split_fractions
        if len(f) != 3 or any(v < 0 for v in f) or abs(sum(f) - 1.0) > 1e-6:
            raise ConfigError("'split_fractions' must be three fractions (train, val, test) that add up to 1.")
        if f[0] <= 0 or f[2] <= 0:
            raise ConfigError("'split_fractions' needs a train and a test fraction above 0.")
        if any(not 0 < p <= 100 for p in self.fewshot):
            raise ConfigError("'fewshot' percentages must be in (0, 100].")
        if self.bootstrap < 0 or self.fewshot_seeds < 1:
            raise ConfigError("'bootstrap' must be >= 0 and 'fewshot_seeds' >= 1.")
        if not self.probes:
            raise ConfigError("'probes' must name linear, knn or both.")
        if any(s not in (1, 2, 3) for s in self.severities):
            raise ConfigError("'severities' must be among 1, 2, 3.")
        if not self.c_grid or not self.alpha_grid or not self.knn_k:
            raise ConfigError("'c_grid', 'alpha_grid' and 'knn_k' must not be empty.")
        self.segmentation.validate()


@dataclass
class ProbeOptions:
    """Operational settings (not fingerprinted): where corrupted test images are re-embedded; where the
    metrics are logged besides metrics.json."""

    device: str = "auto"
    batch_size: int = 64
    #: refuse to start when the features cannot be held in memory (docs/pretrain.md, "Memory check")
    memory_check: bool = True
    #: experiment trackers besides metrics.json: tensorboard, mlflow, wandb (docs/tracking.md)
    loggers: list[str] = field(default_factory=list)
