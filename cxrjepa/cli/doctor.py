"""cxrjepa doctor: check that this install can run cxrjepa (exit 1 when something required is missing)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cxrjepa.cli.common import JsonOpt, QuietOpt, VerboseOpt, execute
from cxrjepa.core import console

HELP = (
    "Check this install: Python, torch, CUDA and GPUs, required packages and versions, which DICOM transfer "
    "syntaxes can be decoded (each decoder is self-tested), and write access to the output folder. "
    "Exits 1 when something required is missing.\n\n"
    "Example: cxrjepa doctor --out runs/  (or --json for machines)"
)


def _yes(flag: bool | None) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def render(report: dict, *, verbose: bool = False, out: Console | None = None) -> None:
    """Print the report as Rich tables (stdout)."""
    con = out or Console(file=sys.stdout, highlight=False)
    t = report["torch"]
    summary = Table(title="cxrjepa doctor", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    py = report["python"]
    summary.add_row("cxrjepa", report["cxrjepa"])
    summary.add_row(
        "Python",
        escape(f"{py['version']} ({py['executable']})")
        + ("" if py.get("satisfied") is not False else f" [red]needs {py['requirement']}[/]"),
    )
    summary.add_row("Platform", escape(report["platform"]))
    summary.add_row("CPU", f"{report['cpu']['count']} cores, {report['cpu']['memory_gb']} GB memory")
    summary.add_row("torch", t["version"] or "[red]missing[/]")
    cuda = f"yes (CUDA {t['cuda_version']}, cuDNN {t['cudnn']})" if t["cuda_available"] else "no"
    summary.add_row("CUDA", cuda)
    for gpu in t["gpus"]:
        summary.add_row(
            f"GPU {gpu['index']}",
            f"{escape(gpu['name'])}, {gpu['memory_gb']} GB, sm {gpu['capability']}, bf16 {'yes' if gpu['bf16'] else 'no'}",
        )
    if t.get("mps_available"):
        summary.add_row("MPS", "yes")
    o = report["output"]
    where = escape(f"{o['path']}: ") + (
        "[green]writable[/]" if o["writable"] else f"[red]not writable[/] ({escape(str(o['error']))})"
    )
    if o.get("free_gb") is not None:
        where += f", {o['free_gb']} GB free"
    if o.get("note"):
        where += escape(f" ({o['note']})")
    summary.add_row("Output", where)
    con.print(summary)

    pk = Table(title="Packages", title_justify="left")
    for col in ("package", "version", "needs", "status") + (("for",) if verbose else ()):
        pk.add_column(col, no_wrap=col == "package")
    for p in report["packages"]:
        if not p["importable"]:
            status = "[red]missing[/]" if p["required"] else "[yellow]not installed[/] (optional)"
        elif p["satisfied"] is False:
            status = "[red]out of range[/]"
        else:
            status = "[green]ok[/]"
        cells = [p["name"], escape(str(p["version"] or "-")), escape(p["requirement"] or ""), status]
        pk.add_row(*cells, *([escape(p["purpose"])] if verbose else []))
    con.print(pk)

    ts = Table(title="DICOM transfer syntaxes (decoding)", title_justify="left")
    ts.add_column("transfer syntax", ratio=3)
    ts.add_column("UID", no_wrap=True)
    ts.add_column("decodable")
    ts.add_column("plugins", ratio=1)
    ts.add_column("self-test", ratio=1)
    hidden = 0
    for s in report["dicom"]["transfer_syntaxes"]:
        if not verbose and not s["decodable"] and not s["essential"]:
            hidden += 1
            continue
        test = {"ok": "[green]ok[/]", "partial": "[yellow]partial[/]", "failed": "[red]failed[/]"}.get(
            s["verified"], "-"
        )
        if s["verified"] in ("partial", "failed"):
            test += (
                " (" + escape(", ".join(k for k, v in s["verification"]["by_plugin"].items() if v != "ok")) + " fail)"
            )
        ts.add_row(escape(s["name"]), s["uid"], _yes(s["decodable"]), escape(", ".join(s["plugins"]) or "-"), test)
    con.print(ts)
    if hidden:
        con.print(
            f"[dim]{hidden} more syntaxes (video, JPEG 2000 Part 2, JPIP, SMPTE) cannot be decoded; --verbose lists them.[/]"
        )

    for w in report["warnings"]:
        con.print(f"[yellow]warning:[/] {escape(w)}")
    for p in report["problems"]:
        con.print(f"[red]problem:[/] {escape(p)}")
    con.print(
        "[green]All required checks passed.[/]"
        if report["ok"]
        else f"[red]{len(report['problems'])} problem(s) found.[/]"
    )


def command(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output folder whose write access to check (default: the current folder)."),
    ] = Path("."),
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    from cxrjepa.doctor import diagnose

    def run() -> dict:
        report = diagnose(out)
        if not json_output and not quiet:
            render(report, verbose=verbose)
        elif quiet and not json_output:
            for p in report["problems"]:
                console.error(p)
        return report

    execute(run, json_output=json_output, quiet=quiet, verbose=verbose, summarize=lambda r: (r, 0 if r["ok"] else 1))
