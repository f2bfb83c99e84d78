"""The stages a pipeline can run: name -> artifact kind, config class and Python function.

Modules are imported lazily so planning a pipeline does not import torch for stages it skips.
A stage function is called as ``fn(out, config, **inputs, **options, force=...)`` and returns an Artifact.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StageDef:
    name: str
    kind: str
    module: str
    config: str
    function: str
    inputs: tuple[str, ...]
    required: tuple[str, ...] = ()

    def load(self) -> tuple[type, Callable]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.config), getattr(mod, self.function)


STAGES: dict[str, StageDef] = {}


def register(stage: StageDef) -> StageDef:
    STAGES[stage.name] = stage
    return stage


register(StageDef("demo-data", "demo", "cxrjepa.demo.api", "DemoConfig", "run_demo", ()))
register(StageDef("ingest", "dataset", "cxrjepa.ingest.api", "IngestConfig", "run_ingest", ("src", "labels", "masks"), ("src",)))
register(StageDef("pretrain", "run", "cxrjepa.pretrain.api", "PretrainConfig", "run_pretrain", ("data", "teacher"), ("data",)))
register(StageDef("embed", "embeddings", "cxrjepa.embed.api", "EmbedConfig", "run_embed", ("encoder", "data"), ("encoder", "data")))
register(StageDef("probe", "probe", "cxrjepa.probe.api", "ProbeConfig", "run_probe", ("embeddings", "labels"), ("embeddings",)))
register(StageDef("report", "report", "cxrjepa.report.api", "ReportConfig", "run_report", ("artifacts",), ("artifacts",)))
