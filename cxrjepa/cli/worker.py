"""``python -m cxrjepa.cli.worker SPEC``: one worker of a launch (torchrun starts N of these).

It reads the launch spec the launcher wrote (:class:`cxrjepa.runtime.LaunchSpec`), runs the stage function
the spec names with the launcher's console settings, and reports errors like every other command (one
sentence, the documented exit code). Results are the launcher's to print; a worker prints none.
"""

from __future__ import annotations

import sys

import typer

from cxrjepa.cli.common import execute
from cxrjepa.core import console
from cxrjepa.core.errors import EXIT_OK, EXIT_USAGE, CxrjepaError


def main(argv: list[str] | None = None) -> int:
    from cxrjepa.runtime import LaunchSpec

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        console.error("usage: python -m cxrjepa.cli.worker LAUNCH_SPEC (cxrjepa's launchers start this).")
        return EXIT_USAGE
    try:
        spec = LaunchSpec.read(args[0])
    except CxrjepaError as exc:
        console.error(exc.message)
        return exc.exit_code
    try:
        execute(spec.call, quiet=spec.quiet, verbose=spec.verbose, summarize=lambda _result: (None, EXIT_OK))
    except typer.Exit as done:
        return int(done.exit_code)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
