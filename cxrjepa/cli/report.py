"""cxrjepa report: a self-contained HTML page from any mix of artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrjepa.cli.common import (
    ConfigOpt,
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    OutOpt,
    PrintConfigOpt,
    QuietOpt,
    SetOpt,
    VerboseOpt,
    execute,
    stage_config,
)

HELP = (
    "Build a self-contained HTML report (index.html, summary.md, figures/) from datasets, runs, embeddings "
    "and probes. Upstream artifacts are found through each manifest's inputs, so 'cxrjepa report PROBE "
    "--out REPORT' is enough; give several runs or probes to compare them side by side."
)


def command(
    out: OutOpt,
    artifacts: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Artifact folders to report on (dataset, run, embeddings, probe), in the order to show them.",
            metavar="ARTIFACT...",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    title: Annotated[str | None, typer.Option("--title", help="The page's title (default: 'cxrjepa report').")] = None,
    device: Annotated[
        str, typer.Option("--device", help="Where the encoders run for patch-feature maps: auto, cpu or cuda.")
    ] = "auto",
    print_cfg: PrintConfigOpt = False,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    from cxrjepa.report.api import run_report
    from cxrjepa.report.config import ReportConfig

    def go():
        cfg = stage_config(ReportConfig, config, set_, {"title": title}, print_only=print_cfg)
        return run_report(out, cfg, artifacts=list(artifacts or []), device=device, force=force, dry_run=dry_run)

    execute(go, json_output=json_output, quiet=quiet, verbose=verbose)
