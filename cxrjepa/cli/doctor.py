"""cxrjepa doctor (being built)."""

from __future__ import annotations

import typer

HELP = "Not built yet."


def command() -> None:
    typer.echo("cxrjepa doctor is not built yet.", err=True)
    raise typer.Exit(1)
