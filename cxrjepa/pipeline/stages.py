"""The stages a pipeline can run: name -> artifact kind, config class, Python function and planner.

Modules are imported lazily, only for the stages a pipeline names.
A stage function is called as ``fn(out, config, **inputs, options=Options(...), force=...)`` (or with the
options as keyword arguments when the stage has no options class) and returns an Artifact.

The stage decides whether its output is up to date, resumable, to be continued or to be redone, and the
runner asks it (:meth:`StageDef.plan`): a stage with rules of its own names its plan function (pretrain:
a run stopped by ``--max-steps`` continues), which its own run path uses too; the others are planned by the
fingerprint rule their ``begin()`` applies (parameters, inputs and the module's ``ALGORITHM_VERSION``).
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
    options: str | None = None  # name of the operational options dataclass, if the stage has one
    refs: str | None = None  # name of the stage's own input-refs function (else core.artifact.input_refs)
    planner: str | None = None  # name of the stage's own plan function (else the fingerprint rule of begin())

    def input_refs(self, inputs: dict, options: dict | None = None) -> list[dict]:
        """The inputs as the stage's fingerprint sees them (so a dry run predicts skips exactly).

        A stage's own refs function gets its options object too when it takes one (the ingest salt)."""
        import inspect

        from cxrjepa.core.artifact import input_refs

        extra = {}
        if self.refs and self.options:
            fn = getattr(importlib.import_module(self.module), self.refs)
            if "options" in inspect.signature(fn).parameters:
                extra["options"] = self.options_object(options or {})

        if self.refs:
            return getattr(importlib.import_module(self.module), self.refs)(**inputs, **extra)
        return input_refs(inputs)

    def algorithm_version(self) -> int:
        """The stage module's ``ALGORITHM_VERSION`` (1 when it defines none)."""
        return int(getattr(importlib.import_module(self.module), "ALGORITHM_VERSION", 1))

    def plan(self, out, config, inputs: dict, options: dict, force: bool = False):
        """What running the stage into ``out`` would do (a :class:`cxrjepa.core.artifact.Plan`), by the rule
        the stage itself applies when it runs."""
        if self.planner:
            fn = getattr(importlib.import_module(self.module), self.planner)
            extra = {"options": self.options_object(options)} if self.options else {}
            return fn(out, config, **inputs, **extra, force=force)
        from cxrjepa.core.artifact import plan_artifact

        return plan_artifact(
            out,
            self.kind,
            fingerprint_params(config),
            self.input_refs(inputs, options),
            force=force,
            version=self.algorithm_version(),
        )

    def load(self) -> tuple[type, Callable]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.config), getattr(mod, self.function)

    def options_object(self, options: dict):
        from cxrjepa.core.config import from_dict

        return from_dict(getattr(importlib.import_module(self.module), self.options), options)

    def call(self, out, config, inputs: dict, options: dict, force: bool):
        """Run the stage; ``options`` (a plain mapping) becomes the stage's options object."""
        fn = getattr(importlib.import_module(self.module), self.function)
        if self.options:
            return fn(out, config, **inputs, options=self.options_object(options), force=force)
        return fn(out, config, **inputs, **options, force=force)


def fingerprint_params(config):
    """The part of a stage config that enters its fingerprint (a config may keep run-length settings such
    as a step budget out of it by defining ``science()``)."""
    science = getattr(config, "science", None)
    return science() if callable(science) else config


STAGES: dict[str, StageDef] = {}


def register(stage: StageDef) -> StageDef:
    STAGES[stage.name] = stage
    return stage


register(StageDef("demo-data", "demo", "cxrjepa.demo.api", "DemoConfig", "run_demo", ()))
register(
    StageDef(
        "ingest",
        "dataset",
        "cxrjepa.ingest.api",
        "IngestConfig",
        "run_ingest",
        ("sources", "labels", "masks"),
        ("sources",),
        "IngestOptions",
        "ingest_input_refs",
    )
)
register(
    StageDef(
        "pretrain",
        "run",
        "cxrjepa.pretrain.api",
        "PretrainConfig",
        "run_pretrain",
        ("data", "teacher", "teacher_weights", "init"),
        ("data",),
        "PretrainOptions",
        "pretrain_input_refs",
        "plan_pretrain",
    )
)
register(
    StageDef(
        "embed",
        "embeddings",
        "cxrjepa.embed.api",
        "EmbedConfig",
        "run_embed",
        ("encoder", "data", "weights"),
        ("encoder", "data"),
        "EmbedOptions",
        "embed_input_refs",
    )
)
register(
    StageDef(
        "probe",
        "probe",
        "cxrjepa.probe.api",
        "ProbeConfig",
        "run_probe",
        ("embeddings", "labels", "split"),
        ("embeddings",),
        "ProbeOptions",
    )
)
register(
    StageDef("report", "report", "cxrjepa.report.api", "ReportConfig", "run_report", ("artifacts",), ("artifacts",))
)
register(
    StageDef(
        "export",
        "export",
        "cxrjepa.export.api",
        "ExportConfig",
        "run_export",
        ("encoder", "data"),
        ("encoder",),
        None,
        "export_input_refs",
    )
)
