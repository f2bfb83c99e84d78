"""Errors and exit codes.

Every error a user can cause is a :class:`CxrjepaError` carrying one clear sentence and an exit code.
The CLI prints that sentence on stderr without a traceback (``--verbose`` shows it).

Exit codes (documented in docs/cli.md):

* 0 -- success
* 1 -- failure (bad input artifact, runtime error, interrupted)
* 2 -- usage error (bad option, unknown config key, bad value)
* 3 -- finished, but some inputs were rejected (they are listed in the artifact's failure ledger)

Failures that are not CxrjepaErrors (a full disk, a corrupt or poisoned file) are turned into one sentence
that names the file and the cause by :func:`format_error` (exit 1), which the CLI and the pipeline runner use.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3


class CxrjepaError(Exception):
    """A failure with a message meant for the user (one sentence, no identifying values)."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class UsageError(CxrjepaError):
    """The command line or a config file asked for something that does not exist or is malformed."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config file or ``--set`` override is invalid (unknown key, wrong type)."""


class ArtifactError(CxrjepaError):
    """An input artifact is missing, partial, corrupt or of the wrong kind."""

    exit_code = EXIT_FAILURE


class UnreadableFileError(CxrjepaError):
    """An input file is corrupt, truncated, or not what it claims to be (a weights file holding code)."""


# ---------------------------------------------------------------------------------------------------------------
# One sentence for failures that are not CxrjepaErrors: full disks, unreadable files, refused pickles.
# Sentences name the file and the cause, never a value read from a file (a path is fine; a DICOM tag or CSV
# cell is not), so the causes below are built from error classes, errno and positions, not from messages
# that could quote file contents.

#: errno values that mean "the disk (or the user's quota) is full"
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _gb(nbytes: float) -> str:
    if nbytes >= 0.95 * 2**30:
        return f"{nbytes / 2**30:.1f} GB"
    return f"{nbytes / 2**20:.0f} MB" if nbytes >= 2**20 else "under 1 MB"


def note_space_error(
    exc: BaseException, *, what: str | None = None, nbytes: int | None = None, out: str | Path | None = None
) -> None:
    """Attach what a stage was writing (and how much it needs) to a disk-full ``OSError`` passing by, once:
    the innermost context knows best."""
    if not isinstance(exc, OSError) or exc.errno not in SPACE_ERRNOS:
        return
    if what is not None and getattr(exc, "cxrjepa_what", None) is None:
        exc.cxrjepa_what = what
        exc.cxrjepa_bytes = nbytes
    if out is not None and getattr(exc, "cxrjepa_out", None) is None:
        exc.cxrjepa_out = str(out)


@contextlib.contextmanager
def expecting_writes(what: str, nbytes: int | None = None) -> Iterator[None]:
    """Around a stage's big writes: a full disk is reported as writing ``what``, needing about ``nbytes``."""
    try:
        yield
    except OSError as exc:
        note_space_error(exc, what=what, nbytes=nbytes)
        raise


def _free_bytes(path: str | Path) -> int | None:
    p = Path(path)
    for cand in (p, *p.parents):
        if cand.exists():
            try:
                return shutil.disk_usage(cand).free
            except OSError:
                return None
    return None


def _space_sentence(exc: OSError) -> str:
    where = exc.filename or getattr(exc, "cxrjepa_out", None)
    what = getattr(exc, "cxrjepa_what", None)
    nbytes = getattr(exc, "cxrjepa_bytes", None)
    full = "The disk quota was exceeded" if exc.errno == errno.EDQUOT else "The disk is full"
    text = f"{full} ({exc.strerror or os.strerror(exc.errno)})" + (f" on the device holding '{where}'" if where else "")
    if what:
        text += f" while writing {what}"
    elif exc.filename:
        text += " while writing that file"
    free = _free_bytes(where) if where else None
    if nbytes:
        text += f"; this stage writes up to about {_gb(nbytes)} there"
        if free is not None:
            text += f" and {_gb(free)} is free"
    elif free is not None:
        text += f" ({_gb(free)} free now)"
    return text + "; free some space (or choose another --out) and rerun the same command to resume."


def _yaml_position(exc: BaseException) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def file_error_cause(exc: BaseException) -> str | None:
    """A short cause for an error met reading a file, free of the file's contents; None if not one of these."""
    kind = type(exc)
    module = kind.__module__ or ""
    if kind.__name__ == "SafetensorError":  # safetensors' messages are fixed words ("header too large")
        detail = str(exc).splitlines()[0][:120] if str(exc) else "unreadable"
        return f"it is not a valid safetensors file ({detail})"
    if isinstance(exc, pickle.UnpicklingError):
        text = str(exc)
        if "GLOBAL" in text or "unsupported global" in text.lower():
            return (
                "it holds pickled Python objects that loading would have to run, and "
                "torch.load(weights_only=True) refused them; use a safetensors file or a plain state dict"
            )
        return "it is not a readable PyTorch file (corrupt or truncated)"
    if module.startswith("yaml"):
        return f"it is not valid YAML{_yaml_position(exc)}"
    if isinstance(exc, json.JSONDecodeError):
        return f"it is not valid JSON at line {exc.lineno}, column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return f"it is not UTF-8 text (byte {exc.start})"
    if module.startswith(("zarr", "numcodecs")):
        return f"its zarr store is damaged or incomplete ({kind.__name__})"
    if isinstance(exc, (EOFError, zipfile.BadZipFile)):
        return "it is truncated or corrupt"
    if isinstance(exc, RuntimeError) and "PytorchStreamReader" in str(exc):
        return "it is not a readable PyTorch file (corrupt or truncated)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return None


@contextlib.contextmanager
def reading(path: str | Path, what: str = "file") -> Iterator[None]:
    """Around reading one file: a format error becomes :class:`UnreadableFileError` naming the file and cause."""
    try:
        yield
    except CxrjepaError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS:
            raise
        cause = file_error_cause(exc)
        if cause is None:
            raise
        raise UnreadableFileError(f"Cannot read the {what} '{path}': {cause}.") from exc


def format_error(exc: BaseException) -> tuple[str, int] | None:
    """One sentence and an exit code for ``exc``, or None for an unexpected error (a bug: show its type only).

    CxrjepaErrors carry their own; a full disk says where, what and how much; other OS errors name the file
    and the system's reason; file-format errors that escaped :func:`reading` name the cause; running out of
    memory says so.
    """
    if isinstance(exc, CxrjepaError):
        return exc.message, exc.exit_code
    if isinstance(exc, OSError):
        if exc.errno in SPACE_ERRNOS:
            return _space_sentence(exc), EXIT_FAILURE
        reason = exc.strerror or type(exc).__name__
        if exc.filename:
            target = f"'{exc.filename}'" + (f" -> '{exc.filename2}'" if exc.filename2 else "")
            return f"Cannot use {target}: {reason}.", EXIT_FAILURE
        if exc.strerror:
            return (
                f"A system call failed: {reason} ({type(exc).__name__}); rerun with --verbose for where.",
                EXIT_FAILURE,
            )
        return None
    if isinstance(exc, MemoryError):
        return (
            "Ran out of memory; lower the batch size (or use runtime.grad_accum for pretraining) and rerun the "
            "same command."
        ), EXIT_FAILURE
    cause = file_error_cause(exc)
    if cause is not None:
        return f"A file could not be read: {cause}; rerun with --verbose for which one.", EXIT_FAILURE
    return None
