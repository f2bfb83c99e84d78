"""cxrjepa pretrain: self-supervised pretraining of a ViT encoder on a dataset artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrjepa.cli.common import (
    ConfigOpt,
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    LoggerOpt,
    OutOpt,
    PrintConfigOpt,
    QuietOpt,
    SetOpt,
    VerboseOpt,
    artifact_summary,
    execute,
    exit_code_for,
    stage_config,
)
from cxrjepa.core.artifact import Artifact
from cxrjepa.core.errors import EXIT_OK

HELP = (
    "Pretrain an encoder (I-JEPA by default; 'pixel' reconstruction teachers; 'salt' students of a frozen "
    "--teacher) on a dataset artifact; writes a run artifact with checkpoints, metrics and the exported "
    "encoder. --gpus N trains on N GPUs (torchrun); an interrupted run resumes when the same command is run again."
)


def command(
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Dataset artifact to train on (made by 'cxrjepa ingest').")
    ] = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    objective: Annotated[
        str | None,
        typer.Option(
            "--objective",
            help="Pretraining objective: ijepa (default), pixel (masked-block pixel reconstruction: a SALT teacher) or salt (student of a frozen --teacher).",
        ),
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            "--teacher",
            help="SALT's frozen teacher: a run or export folder, timm:NAME (with --teacher-weights), a local Hugging Face folder, or random:ARCH. Never downloaded.",
        ),
    ] = None,
    teacher_weights: Annotated[
        Path | None,
        typer.Option(
            "--teacher-weights", help="Local weights file (safetensors or a plain state dict) for --teacher timm:NAME."
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Start from the encoder of this run or export (an image encoder is inflated to tubelets for clip models).",
        ),
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option("--gpus", help="GPUs on this node; 0 = CPU. Default: 1 GPU if CUDA is available, else CPU."),
    ] = None,
    nproc: Annotated[
        int | None, typer.Option("--nproc", help="Processes on this node; with --gpus 0, several CPU (gloo) processes.")
    ] = None,
    nnodes: Annotated[
        int, typer.Option("--nnodes", help="Number of nodes of a multi-node run (run the same command on each).")
    ] = 1,
    node_rank: Annotated[
        int, typer.Option("--node-rank", help="This node's index in a multi-node run (0 .. nnodes-1).")
    ] = 0,
    rdzv_endpoint: Annotated[
        str | None, typer.Option("--rdzv-endpoint", help="HOST:PORT of node 0 for a multi-node run.")
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", help="Stop after this many steps (smoke tests); rerun without it to continue."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Data-loader workers per process (runtime.workers).")
    ] = None,
    logger: LoggerOpt = None,
    tensorboard: Annotated[
        bool,
        typer.Option("--tensorboard", help="The same as --logger tensorboard: TensorBoard logs in RUN/tensorboard."),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="Continue an interrupted run from its newest checkpoint (default), or start over.",
        ),
    ] = True,
    print_config_: PrintConfigOpt = False,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    from cxrjepa.core.errors import UsageError
    from cxrjepa.pretrain import PretrainConfig, PretrainOptions, run_pretrain
    from cxrjepa.pretrain.api import DryRun
    from cxrjepa.tracking import parse_loggers

    flags = {"objective": objective, "runtime": {"workers": workers}}

    def _run():
        cfg = stage_config(PretrainConfig, config, set_, flags, print_only=print_config_)
        if data is None or out is None:
            raise UsageError("Missing option '--data' or '--out': the dataset artifact to train on and the run folder.")
        options = PretrainOptions(
            gpus=gpus,
            nproc=nproc,
            nnodes=nnodes,
            node_rank=node_rank,
            rdzv_endpoint=rdzv_endpoint,
            max_steps=max_steps,
            loggers=parse_loggers(logger),
            tensorboard=tensorboard,
            resume=resume,
        )
        return run_pretrain(
            out,
            cfg,
            data=data,
            teacher=teacher,
            teacher_weights=teacher_weights,
            init=init,
            options=options,
            force=force,
            dry_run=dry_run,
        )

    def _summarize(result):
        if isinstance(result, DryRun):
            if not json_output:
                typer.echo(result.text(), nl=False)
            return result.as_dict(), EXIT_OK
        if isinstance(result, Artifact):
            return artifact_summary(result), exit_code_for(result)
        return None, EXIT_OK

    execute(_run, json_output=json_output, quiet=quiet, verbose=verbose, summarize=_summarize)
