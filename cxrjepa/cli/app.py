"""The ``cxrjepa`` command: one Typer app, one module per subcommand."""

from __future__ import annotations

from typing import Annotated

import typer

import cxrjepa

app = typer.Typer(
    name="cxrjepa",
    help=(
        "Turn raw chest X-ray and ultrasound archives into self-supervised encoders and embeddings.\n\n"
        "Stages hand work to each other through artifacts (folders with a manifest.yaml): "
        "ingest -> pretrain -> embed -> probe -> report. 'cxrjepa run PIPELINE.yaml' chains them.\n\n"
        "Exit codes: 0 done; 1 failure (a missing, partial or corrupt input, a full disk, an interrupted run: one "
        "sentence names the file and the cause); 2 usage error (a bad option or setting, an output folder another "
        "command is writing, a run that cannot fit in memory); 3 finished, but some inputs were rejected (listed "
        "in the artifact's failure ledger)."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,  # never print local variables (they can hold DICOM values)
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrjepa {cxrjepa.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """cxrjepa: self-supervised encoders for chest X-ray and ultrasound."""


def _register() -> None:
    from cxrjepa.cli import demo, doctor, embed, export, ingest, inspect, pretrain, probe, report, run

    app.command("ingest", help=ingest.HELP, no_args_is_help=True)(ingest.command)
    app.command("pretrain", help=pretrain.HELP)(pretrain.command)
    app.command("embed", help=embed.HELP)(embed.command)
    app.command("probe", help=probe.HELP)(probe.command)
    app.command("report", help=report.HELP)(report.command)
    app.command("export", help=export.HELP, no_args_is_help=True)(export.command)
    app.command("run", help=run.HELP, no_args_is_help=True)(run.command)
    app.command("doctor", help=doctor.HELP)(doctor.command)
    app.command("inspect", help=inspect.HELP, no_args_is_help=True)(inspect.command)
    app.command("demo-data", help=demo.HELP)(demo.command)


_register()


def main() -> None:
    app()
