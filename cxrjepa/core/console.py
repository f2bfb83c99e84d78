"""Console output: Rich on stderr, progress only on a terminal, machine-readable results on stdout.

Settings are process-wide and set once by the CLI (``--quiet``, ``--verbose``, ``--json``); library
callers get sensible defaults (messages on stderr, no progress bars unless stderr is a terminal).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass
class _Settings:
    quiet: bool = False
    verbose: bool = False
    json: bool = False


settings = _Settings()
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def configure(*, quiet: bool = False, verbose: bool = False, json_output: bool = False) -> None:
    settings.quiet = quiet
    settings.verbose = verbose
    settings.json = json_output


def info(message: str) -> None:
    """A progress message for people (stderr); silent with ``--quiet``."""
    if not settings.quiet:
        stderr.print(message, markup=False)


def detail(message: str) -> None:
    """Only with ``--verbose``."""
    if settings.verbose and not settings.quiet:
        stderr.print(message, markup=False, style="dim")


def warn(message: str) -> None:
    """Warnings always show (also with ``--quiet``)."""
    stderr.print(f"warning: {message}", markup=False, style="yellow")


def loud_warning(message: str) -> None:
    """A warning that must not be missed (collapse, data problems)."""
    stderr.rule(style="bold red")
    stderr.print(f"WARNING: {message}", markup=False, style="bold red")
    stderr.rule(style="bold red")


def error(message: str) -> None:
    stderr.print(f"error: {message}", markup=False, style="red")


def emit_json(data: Any) -> None:
    """Machine-readable result on stdout (``--json``)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def progress_enabled() -> bool:
    return not settings.quiet and stderr.is_terminal


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass

    def update(self, **kwargs: Any) -> None:
        pass


class _Task:
    def __init__(self, progress: Progress, task_id: Any):
        self._progress = progress
        self._id = task_id

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._id, n)

    def update(self, **kwargs: Any) -> None:
        self._progress.update(self._id, **kwargs)


@contextlib.contextmanager
def progress(description: str, total: float | None = None, *, enabled: bool = True) -> Iterator[_Task | _NullTask]:
    """A Rich progress bar with ETA on stderr; a no-op when quiet, not a terminal or not ``enabled`` (the
    ranks of a process group other than 0)."""
    if not enabled or not progress_enabled():
        yield _NullTask()
        return
    columns = [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, console=stderr, transient=False) as prog:
        task_id = prog.add_task(description, total=total, status="")
        yield _Task(prog, task_id)
