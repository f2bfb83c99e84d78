"""cxrjepa run: chain stages from a pipeline file, skipping the ones that are up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxrjepa.cli.common import DryRunOpt, JsonOpt, QuietOpt, VerboseOpt, execute
from cxrjepa.core import console

HELP = (
    "Run a pipeline (pipelines/NAME.yaml): each stage in order, skipping the ones whose artifact is complete "
    "and up to date. Example: cxrjepa run pipelines/quickstart.yaml"
)

_STYLE = {"run": "green", "skip": "dim", "would run": "green", "would skip": "dim", "failed": "red", "not run": "red"}


def _show(result) -> None:
    title = f"pipeline {result.name} -> {result.root}" + (" (dry run: nothing written)" if result.dry_run else "")
    table = Table(title=title, title_justify="left")
    for col in ("stage", "command", "output", "action", "why", "seconds"):
        table.add_column(col)
    for s in result.steps:
        style = _STYLE.get(s.action, "")
        secs = f"{s.seconds:.1f}" if s.action in ("run", "failed") else ""
        table.add_row(s.id, s.stage, s.out, f"[{style}]{s.action}[/]" if style else s.action, s.reason, secs)
    console.stderr.print(table)


def command(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file, e.g. pipelines/quickstart.yaml.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Root folder for the stages' outputs (default: the pipeline's 'out')."),
    ] = None,
    stage_ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="With --force: only these stage ids are redone (e.g. --force embed probe).", show_default=False
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Redo stages even if up to date: all of them, or only the stage ids given after it."
        ),
    ] = False,
    dry_run: DryRunOpt = False,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override a stage setting: --set ID.key=value (e.g. --set pretrain.optim.lr=1e-3)."
        ),
    ] = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    from cxrjepa.pipeline.runner import run_pipeline

    if stage_ids and not force:
        console.error("Stage ids after the pipeline file only make sense with --force (e.g. --force embed probe).")
        raise typer.Exit(2)
    forced: bool | list[str] = list(stage_ids) if stage_ids else force

    def go():
        return run_pipeline(pipeline, root=out, force=forced, dry_run=dry_run, sets=sets or [])

    def summarize(result):
        if not quiet:
            _show(result)
        if result.error:
            console.error(result.error)
        return result.to_dict(), result.exit_code

    execute(go, json_output=json_output, quiet=quiet, verbose=verbose, summarize=summarize)
