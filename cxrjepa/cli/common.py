"""Options and error handling shared by every subcommand.

Subcommands only parse options and call their stage's Python function; :func:`execute` turns the result
or the error into output and an exit code (0 ok, 1 failure, 2 usage, 3 some inputs rejected).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrjepa.core import console
from cxrjepa.core.artifact import Artifact
from cxrjepa.core.config import dump_yaml, load_config
from cxrjepa.core.errors import EXIT_FAILURE, EXIT_OK, EXIT_REJECTED, format_error

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder to write the artifact to (created if missing).")]
ConfigOpt = Annotated[
    list[Path] | None,
    typer.Option("--config", "-c", help="YAML config file; repeat to layer several (later files win)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override one setting, e.g. --set optim.lr=3e-4 (repeatable; wins over --config)."
    ),
]
PrintConfigOpt = Annotated[bool, typer.Option("--print-config", help="Print the resolved config as YAML and exit.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Redo the work even if the artifact is complete and up to date.")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show what would be done and write nothing.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable result on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr; no progress bars.")]
MemoryCheckOpt = Annotated[
    bool,
    typer.Option(
        "--memory-check/--no-memory-check",
        help="Refuse to start when the estimated peak memory does not fit this machine (default), or try anyway.",
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="More detail, and full tracebacks on errors.")]
PartOpt = Annotated[
    str | None,
    typer.Option(
        "--part",
        help="Run only part K of N (K = 0 .. N-1, e.g. --part $SLURM_ARRAY_TASK_ID/8 with "
        "sbatch --array=0-7); parts may run at once on machines sharing --out "
        "(docs/cluster.md).",
    ),
]
FinalizeOpt = Annotated[
    bool,
    typer.Option(
        "--finalize",
        help="Assemble the artifact from its finished parts (only --out is needed); "
        "names the parts to rerun when some are missing (exit 1).",
    ),
]
AutoFinalizeOpt = Annotated[
    bool,
    typer.Option(
        "--auto-finalize/--no-auto-finalize",
        help="With --part: the last part to finish assembles the artifact (default).",
    ),
]
LoggerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--logger",
        help="Experiment trackers: csv (always written), tensorboard, mlflow, wandb; comma-separated "
        "or repeated (docs/tracking.md).",
    ),
]


def resolve_config(cls: type, config: list[Path] | None, sets: list[str] | None, flags: dict[str, Any] | None = None):
    return load_config(cls, files=config or [], overrides=sets or [], flags=flags)


def print_config(cfg: Any) -> None:
    sys.stdout.write(dump_yaml(cfg))


def stage_config(
    cls: type,
    config: list[Path] | None,
    sets: list[str] | None,
    flags: dict[str, Any] | None = None,
    *,
    print_only: bool = False,
):
    """The resolved config of a stage; with ``--print-config`` it is printed and the command ends (exit 0)."""
    cfg = resolve_config(cls, config, sets, flags)
    if print_only:
        print_config(cfg)
        raise typer.Exit(EXIT_OK)
    return cfg


def artifact_summary(artifact: Artifact) -> dict:
    return {
        "path": str(artifact.path),
        "kind": artifact.kind,
        "status": artifact.manifest.get("status"),
        "fingerprint": artifact.fingerprint,
        "content_fingerprint": artifact.content_fingerprint,
        "counts": artifact.counts,
    }


def exit_code_for(artifact: Artifact) -> int:
    """3 when the stage finished but rejected some inputs (they are in the failure ledger)."""
    return EXIT_REJECTED if int(artifact.counts.get("rejected", 0) or 0) > 0 else EXIT_OK


def report_error(exc: BaseException, verbose: bool = False) -> int:
    """Print ``exc`` as one sentence on stderr (cxrjepa.core.errors.format_error) and return its exit code.

    Errors it does not know are bugs: their type is named, their message (which could quote a value from an
    input file) only with ``--verbose``, which also prints every traceback."""
    if verbose:
        traceback.print_exc(file=sys.stderr)
    known = format_error(exc)
    if known is not None:
        console.error(known[0])
        return known[1]
    if verbose:
        console.error(f"Unexpected {type(exc).__name__}: {exc}")
    else:
        console.error(f"Unexpected {type(exc).__name__}; rerun with --verbose for the traceback.")
    return EXIT_FAILURE


def part_summary(result: Any) -> tuple[Any, int]:
    """The result of a ``--part`` run and exit 0 once the part's work is done, even when the artifact it
    finalized rejected inputs (so a scheduler's ``afterok`` dependency holds); ``--finalize`` reports them."""
    if isinstance(result, Artifact):
        if exit_code_for(result) == EXIT_REJECTED:
            console.warn("Some inputs were rejected; see the failure ledger in the artifact.")
        return artifact_summary(result), EXIT_OK
    return result, EXIT_OK


def execute(
    fn: Callable[[], Any],
    *,
    json_output: bool = False,
    quiet: bool = False,
    verbose: bool = False,
    summarize: Callable[[Any], tuple[dict, int]] | None = None,
) -> None:
    """Run a stage function, print its result, and exit with the documented code.

    ``fn`` returns an :class:`Artifact` (summarised and checked for rejections) or any JSON-able value
    (printed with ``--json``; exit 0). ``summarize`` can replace that mapping.
    """
    console.configure(quiet=quiet, verbose=verbose, json_output=json_output)
    try:
        result = fn()
    except KeyboardInterrupt:
        console.error("Interrupted; completed work is kept, rerun the same command to resume.")
        raise typer.Exit(EXIT_FAILURE) from None
    except typer.Exit:
        raise
    except Exception as exc:
        raise typer.Exit(report_error(exc, verbose)) from None
    if summarize is not None:
        data, code = summarize(result)
    elif isinstance(result, Artifact):
        data, code = artifact_summary(result), exit_code_for(result)
    else:
        data, code = result, EXIT_OK
    if json_output and data is not None:
        console.emit_json(data)
    if code == EXIT_REJECTED and not quiet:
        console.warn("Finished, but some inputs were rejected; see the failure ledger in the artifact.")
    raise typer.Exit(code)
