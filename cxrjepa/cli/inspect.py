"""cxrjepa inspect: show an artifact's manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cxrjepa.cli.common import JsonOpt, QuietOpt, VerboseOpt, execute
from cxrjepa.core.artifact import MANIFEST, read_manifest
from cxrjepa.core.errors import ArtifactError

HELP = "Show an artifact's manifest (kind, status, provenance, params, inputs, counts) as a table; --json for machines."


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if isinstance(data, dict) and data:
        for k, v in data.items():
            rows.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, v in enumerate(data):
            rows.extend(_flatten(v, f"{prefix}[{i}]"))
    else:
        text = ", ".join(map(str, data)) if isinstance(data, list) else ("" if data is None else str(data))
        rows.append((prefix, text))
    return rows


def inspect_artifact(path: Path) -> dict:
    manifest = read_manifest(path)
    if manifest is None:
        raise ArtifactError(f"'{path}' is not a cxrjepa artifact (no {MANIFEST}).")
    return manifest


def render(manifest: dict, path: Path) -> Table:
    table = Table(
        title=f"{path}  [{manifest.get('kind')}, {manifest.get('status')}]", title_justify="left", show_lines=False
    )
    table.add_column("section", style="bold")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for section in (
        "schema",
        "kind",
        "status",
        "created",
        "finished",
        "duration_s",
        "fingerprint",
        "content_fingerprint",
    ):
        table.add_row("artifact", section, str(manifest.get(section)))
    for section in ("producer", "params", "options", "inputs", "counts", "contents", "notes"):
        for key, value in _flatten(manifest.get(section)):
            table.add_row(section, key, value)
    return table


def command(
    path: Annotated[Path, typer.Argument(help="An artifact folder (dataset, run, embeddings, probe, report, demo).")],
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    def go():
        manifest = inspect_artifact(path)
        if not json_output:
            from rich.console import Console

            Console(soft_wrap=True).print(render(manifest, path))
        return manifest

    execute(go, json_output=json_output, quiet=quiet, verbose=verbose)
