"""``cxrjepa run``: run a pipeline's stages in order, skipping the ones that are up to date.

The runner does not plan on its own: it asks each stage (:meth:`StageDef.plan`), which applies the rule it
applies when run directly. A stage is skipped when its output folder holds a complete artifact whose
fingerprint equals the one the stage would compute now (same kind, resolved params, input fingerprints and
algorithm version) and the stage has nothing to add (a pretraining run stopped by ``--max-steps`` continues).
``force`` redoes every stage or the named ones; ``dry_run`` prints the plan and writes nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrjepa.core import console
from cxrjepa.core.artifact import COMPLETE, read_manifest
from cxrjepa.core.config import did_you_mean, load_config, overrides_to_dict, read_yaml
from cxrjepa.core.errors import EXIT_FAILURE, EXIT_OK, EXIT_REJECTED, ConfigError, format_error
from cxrjepa.core.lock import output_lock
from cxrjepa.pipeline.spec import Pipeline, StageSpec, load_pipeline
from cxrjepa.pipeline.stages import STAGES, StageDef


@dataclass
class StepResult:
    id: str
    stage: str
    out: str
    action: str  # run | skip | would run | would skip | failed | not run
    reason: str
    seconds: float = 0.0
    rejected: int = 0


@dataclass
class PipelineResult:
    name: str
    root: str
    dry_run: bool
    steps: list[StepResult] = field(default_factory=list)
    exit_code: int = EXIT_OK
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "pipeline": self.name,
            "root": self.root,
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "error": self.error,
            "stages": [vars(s) for s in self.steps],
        }


def _split_sets(pipeline: Pipeline, sets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--set ID.key=value`` -> {ID: {"key": value}}; unknown stage ids are errors."""
    tree = overrides_to_dict(sets)
    ids = [s.id for s in pipeline.stages]
    for sid, value in tree.items():
        if sid not in ids:
            raise ConfigError(f"--set names unknown stage '{sid}'." + did_you_mean(sid, ids))
        if not isinstance(value, dict):
            raise ConfigError(f"--set {sid}=... must name a setting, as in --set {sid}.key=value.")
    return tree


def resolve_stage(pipeline: Pipeline, spec: StageSpec, sets: dict[str, Any]) -> tuple[StageDef, Any, dict, dict]:
    """The stage definition, resolved config, input paths and options of one pipeline stage."""
    sdef = STAGES[spec.stage]
    config_cls, _ = sdef.load()
    overrides = dict(sets)
    options = dict(spec.options)
    options.update(overrides.pop("options", {}) or {})
    layers = [read_yaml(f) for f in spec.config] + [spec.params, overrides]
    try:
        config = load_config(config_cls, layers=layers)
    except ConfigError as exc:
        raise ConfigError(f"Stage '{spec.id}': {exc.message}") from None
    for key in spec.inputs:
        if key not in sdef.inputs:
            raise ConfigError(
                f"Stage '{spec.id}' ({spec.stage}) has no input '{key}'." + did_you_mean(key, sdef.inputs)
            )
    for key in sdef.required:
        if key not in spec.inputs:
            raise ConfigError(f"Stage '{spec.id}' ({spec.stage}) needs the input '{key}'.")
    inputs = {k: pipeline.resolve(v) for k, v in spec.inputs.items()}
    return sdef, config, inputs, options


def _upstream_pending(pipeline: Pipeline, spec: StageSpec, will_run: set[str]) -> str | None:
    for up in spec.upstream():
        if up in will_run:
            return up
    return None


def run_pipeline(
    path: str | Path,
    *,
    root: str | Path | None = None,
    force: bool | Sequence[str] = False,
    dry_run: bool = False,
    sets: Sequence[str] = (),
) -> PipelineResult:
    pipeline = load_pipeline(path, root=root, known_stages=list(STAGES))
    forced: set[str]
    if force is True:
        forced = {s.id for s in pipeline.stages}
    elif force:
        forced = set(force)
        ids = [s.id for s in pipeline.stages]
        for f in forced:
            if f not in ids:
                raise ConfigError(f"--force names unknown stage '{f}'." + did_you_mean(f, ids))
    else:
        forced = set()
    set_tree = _split_sets(pipeline, sets)
    result = PipelineResult(pipeline.name, str(pipeline.root), dry_run)
    will_run: set[str] = set()
    for spec in pipeline.stages:
        sdef, config, inputs, options = resolve_stage(pipeline, spec, set_tree.get(spec.id, {}))
        step = StepResult(spec.id, spec.stage, str(spec.out), "", "")
        result.steps.append(step)
        pending = _upstream_pending(pipeline, spec, will_run)
        if pending is not None and dry_run:
            step.action, step.reason = "would run", f"its input '{pending}' will be remade"
            will_run.add(spec.id)
            continue
        missing = [
            str(p)
            for v in inputs.values()
            for p in (v if isinstance(v, list) else [v])
            if isinstance(p, Path) and not p.exists()
        ]
        if missing and dry_run:
            step.action, step.reason = "would fail", f"input '{missing[0]}' does not exist"
            continue
        t0 = time.time()
        try:  # the stage's lock before its folder is read to plan (a dry run takes none and writes nothing)
            with contextlib.nullcontext() if dry_run else output_lock(spec.out, spec.stage):
                artifact = _plan_and_run(
                    spec, sdef, config, inputs, options, spec.id in forced, dry_run, step, will_run
                )
        except Exception as exc:
            known = None if isinstance(exc, _Refused) else format_error(exc)
            if known is None:
                raise
            step.action, step.reason, step.seconds = "failed", known[0], round(time.time() - t0, 2)
            result.exit_code, result.error = known[1], f"Stage '{spec.id}' failed: {known[0]}"
            _mark_not_run(result, pipeline, spec)
            return result
        if artifact is None:
            continue
        step.seconds = round(time.time() - t0, 2)
        if artifact.manifest.get("status") != COMPLETE:
            result.exit_code, result.error = EXIT_FAILURE, f"Stage '{spec.id}' did not complete its artifact."
            return result
        step.rejected = int(artifact.counts.get("rejected", 0) or 0)
    if any(s.rejected for s in result.steps):
        result.exit_code = EXIT_REJECTED
    return result


class _Refused(ConfigError):
    """The stage's output folder holds something a stage must not replace: the pipeline stops (exit 2)."""


def _plan_and_run(
    spec: StageSpec,
    sdef: StageDef,
    config: Any,
    inputs: dict,
    options: dict,
    force: bool,
    dry_run: bool,
    step: StepResult,
    will_run: set[str],
):
    """Plan one stage and run it unless it is up to date (or this is a dry run); the artifact, or None."""
    plan = sdef.plan(spec.out, config, inputs, options, force=force)
    if plan.action == "skip":
        step.action, step.reason = ("would skip" if dry_run else "skip"), plan.reason
        prev = read_manifest(spec.out) or {}
        step.rejected = int((prev.get("counts") or {}).get("rejected", 0) or 0)
        return None
    if plan.action == "refuse":
        raise _Refused(f"Stage '{spec.id}': {plan.reason}.")
    will_run.add(spec.id)
    if dry_run:
        step.action, step.reason = "would run", plan.reason
        return None
    console.info(f"── {spec.id} ({spec.stage}) -> {spec.out}: {plan.reason}")
    artifact = sdef.call(spec.out, config, inputs, options, force=force)
    step.action, step.reason = "run", plan.reason
    return artifact


def _mark_not_run(result: PipelineResult, pipeline: Pipeline, failed: StageSpec) -> None:
    after = False
    for spec in pipeline.stages:
        if after:
            result.steps.append(StepResult(spec.id, spec.stage, str(spec.out), "not run", f"'{failed.id}' failed"))
        after = after or spec.id == failed.id
