"""Settings of ``cxrjepa export`` (all of them enter the export artifact's fingerprint)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cxrjepa.core.errors import ConfigError

#: every format, in the order they are written
FORMATS = ("safetensors", "onnx", "torchscript", "hf")
Format = Literal["safetensors", "onnx", "torchscript", "hf"]

#: the opset torch's ONNX exporter writes natively (lower ones would need a lossy version conversion)
MIN_OPSET = 18


@dataclass
class Tolerance:
    """Largest accepted absolute difference between a format's outputs (pooled features and patch tokens)
    and the PyTorch encoder's on the check batch; above it the export is refused."""

    #: the same timm model on the same weights: exact up to kernel choice
    safetensors: float = 1e-5
    #: another runtime (onnxruntime) fusing and reordering float32 operations
    onnx: float = 1e-3
    #: the same kernels through the TorchScript interpreter
    torchscript: float = 1e-5
    #: transformers' TimmWrapperModel (the same timm model) fed by the exported image processor
    hf: float = 1e-4


@dataclass
class ExportConfig:
    """Which formats to write and how they are checked."""

    #: formats to write; empty = every format the encoder can be exported to faithfully (a clip encoder: all but hf)
    formats: list[Format] | None = None
    #: ONNX operator set (18 or later; 18 runs on onnxruntime >= 1.14 and TensorRT >= 8.6)
    onnx_opset: int = MIN_OPSET
    tolerance: Tolerance = field(default_factory=Tolerance)
    #: samples in the fixed check batch (spread evenly over the dataset; a clip encoder takes one window of each)
    check_samples: int = 8
    #: seed of the synthetic check batch used when no dataset is known (a bare export folder without --data)
    seed: int = 0

    def validate(self) -> None:
        if self.formats is not None:
            if not self.formats:
                raise ConfigError("'formats' must name at least one format (or be empty for all of them).")
            if len(set(self.formats)) != len(self.formats):
                raise ConfigError("'formats' names a format twice.")
        if self.onnx_opset < MIN_OPSET:
            raise ConfigError(
                f"'onnx_opset' must be {MIN_OPSET} or later (the opset torch's exporter writes), not {self.onnx_opset}."
            )
        for name in FORMATS:
            if not getattr(self.tolerance, name) >= 0:
                raise ConfigError(f"'tolerance.{name}' must be zero or more.")
        if self.check_samples < 1:
            raise ConfigError("'check_samples' must be at least 1.")

    def wanted(self) -> list[str]:
        """The formats asked for, in writing order (``None``: every format)."""
        asked = set(self.formats or FORMATS)
        return [f for f in FORMATS if f in asked]
