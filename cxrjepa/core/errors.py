"""Errors and exit codes.

Every error a user can cause is a :class:`CxrjepaError` carrying one clear sentence and an exit code.
The CLI prints that sentence on stderr without a traceback (``--verbose`` shows it).

Exit codes (documented in docs/cli.md):

* 0 -- success
* 1 -- failure (bad input artifact, runtime error, interrupted)
* 2 -- usage error (bad option, unknown config key, bad value)
* 3 -- finished, but some inputs were rejected (they are listed in the artifact's failure ledger)
"""

from __future__ import annotations

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
