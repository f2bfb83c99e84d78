"""``run_pretrain``: the pretrain stage as a Python function (the CLI calls it)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cxrjepa.core import console
from cxrjepa.core.artifact import (
    MANIFEST,
    Artifact,
    Plan,
    begin,
    input_refs,
    open_artifact,
    plan_artifact,
    read_manifest,
)
from cxrjepa.core.atomic import atomic_write_text, atomic_write_yaml
from cxrjepa.core.config import dump_yaml, from_dict, load_config, to_dict
from cxrjepa.core.errors import CxrjepaError, UsageError, expecting_writes
from cxrjepa.core.fingerprint import hash_obj
from cxrjepa.core.lock import output_lock
from cxrjepa.core.schema import check_written
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.models.export import CONFIG as EXPORT_CONFIG
from cxrjepa.models.export import EXPORT_DIR
from cxrjepa.models.export import WEIGHTS as EXPORT_WEIGHTS
from cxrjepa.pretrain import checkpoint as ckpt
from cxrjepa.pretrain.config import PretrainConfig
from cxrjepa.pretrain.layout import CONFIG_FILE, KIND, Run, RunContents, RunCounts
from cxrjepa.pretrain.monitors import METRICS_CSV, METRICS_JSONL, MetricsLog
from cxrjepa.pretrain.objectives import objective_class
from cxrjepa.pretrain.objectives.base import ObjectiveInputs
from cxrjepa.pretrain.trainer import StoppedBySignal, Trainer, TrainOutcome, item_split, planned_steps
from cxrjepa.runtime import (
    DistInfo,
    LaunchSpec,
    ProcessPlan,
    barrier,
    dry_run_command,
    in_worker,
    init_worker,
    launch,
    plan_processes,
    shutdown,
)
from cxrjepa.tracking import FAILED, KILLED, RunInfo, TrackerSet, parse_loggers, read_state, tracker_class
from cxrjepa.tracking.base import input_tags
from cxrjepa.tracking.tensorboard import TENSORBOARD_DIR

#: bump when a change to the pretrain stage's code changes the run it makes for the same settings and inputs
#: (docs/artifacts.md, "Algorithm versions")
ALGORITHM_VERSION = 1
#: the plan's reason when a complete run stopped by --max-steps is continued instead of skipped
CONTINUE_EARLY_STOP = "continue a run stopped early by --max-steps"


@dataclass
class PretrainOptions:
    """Operational settings (not fingerprinted): devices, processes, early stop, logging, resume."""

    #: GPUs on this node (0 = CPU); None = one GPU if CUDA is available, else the CPU
    gpus: int | None = None
    #: processes on this node (CPU runs with several gloo processes; with GPUs it equals ``gpus``)
    nproc: int | None = None
    nnodes: int = 1
    node_rank: int = 0
    #: host:port of node 0 for multi-node rendezvous
    rdzv_endpoint: str | None = None
    #: stop after this many optimizer steps (the run stays resumable to its planned length)
    max_steps: int | None = None
    #: experiment trackers besides metrics.jsonl / metrics.csv: tensorboard, mlflow, wandb (docs/tracking.md)
    loggers: list[str] = field(default_factory=list)
    #: the same as adding ``tensorboard`` to ``loggers``
    tensorboard: bool = False
    #: continue from the newest complete checkpoint of an interrupted run with the same settings
    resume: bool = True


@dataclass
class DryRun:
    """What ``run_pretrain(..., dry_run=True)`` would do."""

    action: str
    reason: str
    processes: int
    device: str
    launch: str | None
    resume_step: int
    planned_steps: int
    frames: int
    config: dict
    #: tracker -> where it would log
    loggers: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return to_dict(self.__dict__)

    def text(self) -> str:
        lines = [
            f"# plan: {self.action} ({self.reason})",
            f"# processes: {self.processes} on {self.device}",
            f"# launch: {self.launch or 'this process (no launcher)'}",
            f"# steps: {self.planned_steps} planned over {self.frames} frames"
            + (f", resuming at {self.resume_step}" if self.resume_step else ""),
            "# loggers: "
            + ", ".join(["csv (metrics.jsonl, metrics.csv)", *(f"{k} ({v})" for k, v in self.loggers.items())]),
            "# resolved config:",
            dump_yaml(self.config).rstrip(),
        ]
        return "\n".join(lines) + "\n"


def pretrain_input_refs(
    data: str | Path,
    teacher: str | Path | None = None,
    teacher_weights: str | Path | None = None,
    init: str | Path | None = None,
) -> list[dict]:
    """The inputs of a pretrain run, as its fingerprint sees them (the pipeline runner uses this too).

    The dataset; SALT's frozen teacher (a run by its content fingerprint, an export by its weights' hash,
    a timm weights file or Hugging Face folder by their files, ``random:ARCH`` by its spec); an ``init``
    encoder (a run or an export) whose weights start the run.
    """
    from cxrjepa.encoders import cxrjepa_encoder_ref, encoder_input_ref

    refs = input_refs({"data": data})
    if teacher is not None:
        refs.append(encoder_input_ref("teacher", teacher, teacher_weights))
    elif teacher_weights is not None:
        raise UsageError("--teacher-weights goes with --teacher timm:NAME.")
    if init is not None:
        refs.append(cxrjepa_encoder_ref("init", Path(init)))
    return refs


def _check_inputs(config: PretrainConfig, teacher, teacher_weights) -> None:
    takes_teacher = getattr(objective_class(config.objective), "takes_inputs", False)
    if teacher is not None and not takes_teacher:
        raise UsageError(f"--teacher goes with --objective salt, not '{config.objective}'.")
    if teacher is None and config.objective == "salt":
        raise UsageError(
            "--objective salt needs a frozen teacher: --teacher RUN, an export folder, timm:NAME "
            "with --teacher-weights FILE, or a local Hugging Face folder."
        )


def _device_words(procs: ProcessPlan) -> str:
    import torch

    unchecked = procs.cuda and not torch.cuda.is_available()
    return procs.describe() + (" (not checked: CUDA is not available here)" if unchecked else "")


def _launch_spec(
    out: Path, config: PretrainConfig, data: Path, inputs: ObjectiveInputs, options: PretrainOptions, force: bool
) -> LaunchSpec:
    """What the launched workers start from: this call's resolved config, inputs and options."""
    args = {
        "out": str(out),
        "data": str(data),
        "teacher": inputs.teacher,
        "teacher_weights": inputs.teacher_weights,
        "init": inputs.init,
        "options": to_dict(options),
        "force": force,
    }
    return LaunchSpec(
        "pretrain",
        f"{__name__}:run_launched",
        args,
        dump_yaml(config),
        quiet=console.settings.quiet,
        verbose=console.settings.verbose,
    )


def run_launched(spec: LaunchSpec) -> Artifact | None:
    """One launched worker (``python -m cxrjepa.cli.worker``): :func:`run_pretrain` with the spec's config,
    inputs and options."""
    a = spec.args
    config = load_config(PretrainConfig, files=[spec.config_path])
    return run_pretrain(
        a["out"],
        config,
        data=a["data"],
        teacher=a["teacher"],
        teacher_weights=a["teacher_weights"],
        init=a["init"],
        options=from_dict(PretrainOptions, a["options"]),
        force=a["force"],
    )


def _resume_step(out: Path, action: str) -> int:
    if action != "resume":
        return 0
    folder = ckpt.latest_checkpoint(out)
    return int(ckpt.read_state(folder)["step"]) if folder else 0


def plan_pretrain(
    out: str | Path,
    config: PretrainConfig,
    *,
    data: str | Path,
    teacher: str | Path | None = None,
    teacher_weights: str | Path | None = None,
    init: str | Path | None = None,
    options: PretrainOptions | None = None,
    force: bool = False,
) -> Plan:
    """Skip, resume, continue or redo the run ``out``: the one rule ``cxrjepa pretrain`` and ``cxrjepa run`` use.

    As for every stage, the fingerprint decides (science settings, inputs, :data:`ALGORITHM_VERSION`); in
    addition a complete run stopped by ``--max-steps`` is continued (action ``resume``) when asked for more
    steps than it has, and ``options.resume=False`` redoes the run.
    """
    options = options or PretrainOptions()
    teacher = _absolute_spec(teacher)
    teacher_weights = str(Path(teacher_weights).absolute()) if teacher_weights else None
    init = str(Path(init).absolute()) if init else None
    refs = pretrain_input_refs(Path(data).absolute(), teacher, teacher_weights, init)
    return _plan(Path(out).absolute(), config, refs, options, force)


def _plan(out: Path, config: PretrainConfig, refs: list[dict], options: PretrainOptions, force: bool) -> Plan:
    plan = plan_artifact(
        out, KIND, config.science(), refs, force=force or not options.resume, version=ALGORITHM_VERSION
    )
    if plan.action == "skip" and Run(Artifact(out, plan.existing or {})).steps_to_go(options.max_steps) > 0:
        return Plan("resume", CONTINUE_EARLY_STOP, plan.fingerprint, plan.existing)
    return plan


def run_pretrain(
    out: str | Path,
    config: PretrainConfig,
    *,
    data: str | Path,
    teacher: str | Path | None = None,
    teacher_weights: str | Path | None = None,
    init: str | Path | None = None,
    options: PretrainOptions | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> Artifact | DryRun | None:
    """Pretrain ``config``'s objective on the dataset artifact ``data`` into the run artifact ``out``.

    ``teacher`` (+ ``teacher_weights`` for ``timm:NAME``): SALT's frozen teacher; ``init``: a run or export
    whose encoder starts the run (inflated to tubelets for clip encoders). Launches torchrun workers when
    more than one process is asked for (unless this process is already one); returns the run artifact
    (``None`` on non-zero ranks), or a :class:`DryRun` with ``dry_run``.
    """
    options = options or PretrainOptions()
    out, data = Path(out).absolute(), Path(data).absolute()
    _check_inputs(config, teacher, teacher_weights)
    loggers = run_loggers(options)
    dataset = DatasetArtifact.open(data)
    teacher = _absolute_spec(teacher)
    teacher_weights = str(Path(teacher_weights).absolute()) if teacher_weights else None
    init = str(Path(init).absolute()) if init else None
    refs = pretrain_input_refs(data, teacher, teacher_weights, init)
    inputs = ObjectiveInputs(teacher=teacher, teacher_weights=teacher_weights, init=init)
    procs = plan_processes(options.gpus, options.nproc, nnodes=options.nnodes, check=not dry_run)
    launching = procs.launches and not in_worker()
    if dry_run:
        plan = _plan(out, config, refs, options, force)
        action = plan.action
        launch_cmd = None
        if launching:
            launch_cmd = dry_run_command(procs, node_rank=options.node_rank, rdzv_endpoint=options.rdzv_endpoint)
        frames = len(item_split(config, dataset)[0])
        return DryRun(
            action,
            plan.reason,
            procs.world,
            _device_words(procs),
            launch_cmd,
            _resume_step(out, action),
            planned_steps(config.train, frames),
            frames,
            to_dict(config),
            {name: tracker_class(name).where(out) for name in loggers},
        )
    # the launcher (node 0) holds the run folder's lock for its workers; rank 0 takes it when there is none
    lock = output_lock(out, "pretrain") if options.node_rank == 0 or not launching else contextlib.nullcontext()
    with lock, _finished_stays_finished(out, config, refs, options, force):
        disk = None
        if not in_worker():
            disk = _check_memory(out, config, dataset, refs, options, force, procs, teacher, teacher_weights)
        with expecting_writes("checkpoints and the exported encoder", disk):
            return _launch_or_train(out, config, dataset, refs, options, force, inputs, data, procs, launching)


@contextlib.contextmanager
def _finished_stays_finished(
    out: Path, config: PretrainConfig, refs: list[dict], options: PretrainOptions, force: bool
):
    """A complete run stopped early by ``--max-steps`` whose continuation fails before it saves a new checkpoint
    stays complete (downstream stages keep accepting it): its manifest is put back as it was.

    The continuation rewrites the manifest to ``partial`` when it starts; a crash, Ctrl-C or failed launch before
    the next checkpoint then restores it. Once a new checkpoint exists the run has moved on and stays partial
    (rerun to finish it). A SIGKILL cannot be caught: the run then stays partial until rerun."""
    before = read_manifest(out) if out.is_dir() and os.environ.get("RANK", "0") == "0" else None
    keep = before is not None and _plan(out, config, refs, options, force).reason == CONTINUE_EARLY_STOP
    try:
        yield
    except BaseException:
        if keep:
            with contextlib.suppress(CxrjepaError):
                now = read_manifest(out) or {}
                latest = ckpt.latest_checkpoint(out)
                step = int(ckpt.read_state(latest)["step"]) if latest else 0
                if (
                    now.get("status") != before["status"]
                    and now.get("fingerprint") == before["fingerprint"]
                    and now.get("created") == before.get("created")
                    and step <= int(before["counts"]["steps"])
                ):
                    atomic_write_yaml(out / MANIFEST, before)
                    console.warn(
                        f"The continuation failed before its first new checkpoint; '{out}' stays the complete "
                        f"run it was (step {before['counts']['steps']})."
                    )
        raise


def _check_memory(
    out: Path,
    config: PretrainConfig,
    dataset: DatasetArtifact,
    refs: list[dict],
    options: PretrainOptions,
    force: bool,
    procs: ProcessPlan,
    teacher: str | None,
    teacher_weights: str | None,
) -> int | None:
    """Refuse, before any model is built, a run whose estimated peak memory does not fit (cxrjepa.pretrain.memory);
    an up-to-date run needs no memory. Returns the disk space its checkpoints take (for a full-disk message)."""
    from cxrjepa.pretrain.memory import check_pretrain_memory, checkpoint_bytes

    if _plan(out, config, refs, options, force).action == "skip":
        return None
    est = check_pretrain_memory(
        config,
        device="cuda" if procs.cuda else "cpu",
        world=procs.world,
        procs_per_node=procs.nproc,
        frames=int(dataset.images.shape[0]),
        teacher=teacher,
        teacher_weights=teacher_weights,
    )
    parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in est.parts.items())
    console.detail(f"Estimated peak memory: {est.total / 2**30:.1f} GB ({parts}).")
    return checkpoint_bytes(est, config)


def _launch_or_train(
    out: Path,
    config: PretrainConfig,
    dataset: DatasetArtifact,
    refs: list[dict],
    options: PretrainOptions,
    force: bool,
    inputs: ObjectiveInputs,
    data: Path,
    procs: ProcessPlan,
    launching: bool,
) -> Artifact | None:
    if launching:
        code = launch(
            _launch_spec(out, config, data, inputs, options, force),
            procs,
            node_rank=options.node_rank,
            rdzv_endpoint=options.rdzv_endpoint,
        )
        if code != 0:
            raise CxrjepaError(
                f"The training processes failed (exit code {code}); see their messages above. "
                "Rerun the same command to resume from the last checkpoint."
            )
        return open_artifact(out, KIND) if options.node_rank == 0 else None
    info = init_worker(procs.cuda)
    try:
        return _train(out, config, dataset, refs, info, options, force, inputs)
    finally:
        shutdown(info)


def run_loggers(options: PretrainOptions) -> list[str]:
    """The trackers a run logs to besides its metrics files (``--logger``, ``--tensorboard``); checked."""
    return parse_loggers(options.loggers, tensorboard=options.tensorboard)


def _open_trackers(out: Path, config: PretrainConfig, refs: list[dict], fingerprint: str, names: list[str]):
    """The run's trackers (rank 0), continuing the runs of trackers.json; ``None`` without any."""
    if not names:
        return None
    tags = {
        "cxrjepa.kind": KIND,
        "cxrjepa.objective": config.objective,
        "cxrjepa.fingerprint": fingerprint,
        "cxrjepa.artifact": str(out),
        **input_tags(refs),
    }
    data = next((r for r in refs if r.get("name") == "data"), None)
    if data is not None:
        tags["cxrjepa.dataset_fingerprint"] = str(data.get("fingerprint"))
    info = RunInfo("pretrain", out, to_dict(config), tags)
    return TrackerSet.open(names, info, history=lambda: MetricsLog.read(out))


def _tracked_files(out: Path) -> dict[str, Path]:
    """What the trackers attach when a run is complete: its manifest, its resolved config, the encoder."""
    return {MANIFEST: out / MANIFEST, CONFIG_FILE: out / CONFIG_FILE, EXPORT_DIR: out / EXPORT_DIR}


def _log_complete(artifact: Artifact, config: PretrainConfig, refs: list[dict], names: list[str]) -> None:
    """An up-to-date run asked for trackers that never saw all of it (not asked for before, or switched off by
    an error): they catch up on its history and get its files and tags."""
    state = read_state(artifact.path)
    rows = MetricsLog.read(artifact.path)
    last = max((int(r.get("step", 0)) for r in rows), default=0)
    behind = [n for n in names if n not in state or (state[n].get("last_step") is None or state[n]["last_step"] < last)]
    trackers = _open_trackers(artifact.path, config, refs, artifact.fingerprint, behind)
    if trackers is not None:
        trackers.finish(_tracked_files(artifact.path), {"cxrjepa.content_fingerprint": artifact.content_fingerprint})


def _ended_by(exc: BaseException) -> str:
    """How an exception ends the tracker runs: stopped (a signal, Ctrl-C) or failed."""
    return KILLED if isinstance(exc, (StoppedBySignal, KeyboardInterrupt)) else FAILED


def _absolute_spec(spec: str | Path | None) -> str | None:
    """An encoder spec with absolute paths (so launched workers and later reruns find the same teacher)."""
    if spec is None:
        return None
    from cxrjepa.encoders import parse_encoder_spec

    return parse_encoder_spec(str(spec)).absolute()


def _train(
    out: Path,
    config: PretrainConfig,
    dataset: DatasetArtifact,
    refs: list[dict],
    info: DistInfo,
    options: PretrainOptions,
    force: bool,
    inputs: ObjectiveInputs,
) -> Artifact | None:
    science = config.science()
    force = force or not options.resume
    loggers = run_loggers(options)
    run_options = {
        "runtime": to_dict(config.runtime),
        "processes": info.world,
        "device": info.device.type,
        "max_steps": options.max_steps,
        "tensorboard": "tensorboard" in loggers,
        "loggers": loggers,
    }
    plan = _plan(out, config, refs, options, force)
    if plan.action == "skip":
        if not info.is_main:
            return None
        console.info(f"'{out}' is up to date; pass --force to train again.")
        artifact = Artifact(out, plan.existing or {})
        _log_complete(artifact, config, refs, loggers)
        return artifact
    builder = begin(out, KIND, science, refs, options=run_options, force=force, dry_run=True, version=ALGORITHM_VERSION)
    barrier(info)  # every rank has decided before rank 0 changes the folder
    if info.is_main:
        if plan.reason == CONTINUE_EARLY_STOP:
            builder.action = "resume"
            builder.created = (plan.existing or {}).get("created", builder.created)
            builder.write_partial()
        else:
            builder = begin(out, KIND, science, refs, options=run_options, force=force, version=ALGORITHM_VERSION)
        atomic_write_text(out / CONFIG_FILE, dump_yaml(config))
    barrier(info)
    trackers = _open_trackers(out, config, refs, builder.fingerprint, loggers) if info.is_main else None
    try:
        trainer = Trainer(
            out,
            config,
            dataset,
            info,
            max_steps=options.max_steps,
            resume=True,
            fingerprint=builder.fingerprint,
            inputs=inputs,
            sinks=[trackers] if trackers else [],
        )
        outcome = trainer.fit()
        artifact = None
        if info.is_main:
            artifact = _finish(builder, config, trainer, outcome, loggers)
            if trackers is not None:
                trackers.finish(_tracked_files(out), {"cxrjepa.content_fingerprint": artifact.content_fingerprint})
        barrier(info)
    except BaseException as exc:
        if trackers is not None:
            trackers.end(_ended_by(exc))
        raise
    return artifact


def _finish(builder, config: PretrainConfig, trainer: Trainer, outcome: TrainOutcome, loggers: list[str]) -> Artifact:
    out = builder.path
    batch = config.train.batch_size
    frames = trainer.frames
    builder.counts.update(
        {
            "steps": outcome.steps,
            "planned_steps": outcome.total_steps,
            "images_seen": outcome.steps * batch,
            "epochs": round(outcome.steps * batch / max(frames, 1), 3),
            "frames": frames,
            "collapse_warnings": outcome.collapse_warnings,
        }
    )
    export = outcome.export
    final = {
        k: outcome.last[k]
        for k in ("loss", "holdout_loss", "feat_std", "rankme", "images_per_s", "mfu")
        if k in outcome.last
    }
    builder.contents.update(
        {
            "objective": config.objective,
            "config": CONFIG_FILE,
            "metrics": [METRICS_JSONL, METRICS_CSV],
            "checkpoints": [f"{ckpt.CHECKPOINTS}/{p.name}" for _, p in ckpt.list_checkpoints(out)],
            "encoder": {
                "weights": f"{EXPORT_DIR}/{EXPORT_WEIGHTS}",
                "config": f"{EXPORT_DIR}/{EXPORT_CONFIG}",
                "timm_model": export.get("timm_model"),
                "embed_dim": export.get("embed_dim"),
                "image_size": export.get("image_size"),
                "patch_size": export.get("patch_size"),
                "weights_sha256": export.get("weights_sha256"),
                "normalization": export.get("normalization"),
            },
            "final": final,
            "stopped_early": outcome.stopped_early,
            "world_size": outcome.world,
            "strategy": outcome.strategy,
            **outcome.describe,
        }
    )
    if outcome.selection is not None:
        builder.contents["selection"] = outcome.selection
    if outcome.init is not None:
        builder.contents["init"] = outcome.init
    if config.model.is_clip:
        builder.contents["clips"] = {
            "frames": config.model.frames,
            "tubelet": config.model.tubelet,
            "stride": config.clips.stride,
        }
    if "tensorboard" in loggers:
        builder.contents["tensorboard"] = TENSORBOARD_DIR
    if outcome.stopped_early:
        builder.notes.append(
            f"Stopped early by --max-steps at step {outcome.steps} of {outcome.total_steps}; "
            "rerun without --max-steps to continue."
        )
    if outcome.collapse_warnings:
        builder.notes.append("The collapse monitor fired during training; see feat_std and rankme in metrics.jsonl.")
    check_written(RunContents, builder.contents, what="a run manifest's contents")
    check_written(RunCounts, builder.counts, what="a run manifest's counts")
    return builder.finish(hash_obj({"weights": export.get("weights_sha256"), "steps": outcome.steps}))
