"""Results files of the benchmarks: generated tables above a marker, hand-written analysis below it.

A rerun with ``--write`` replaces the tables and keeps everything from the marker on, so the notes that
explain a table survive the rerun that refreshes it.
"""

from __future__ import annotations

from pathlib import Path

#: how the line that starts the hand-written part begins, e.g.
#: ``<!-- notes: written by hand, kept when a benchmark's --write rewrites the tables above -->``
_PREFIX = "<!-- notes:"


def write_keeping_notes(path: str | Path, text: str) -> Path:
    """Write the generated ``text`` to ``path``, followed by the existing file's notes part, if it has one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    if _PREFIX in old:
        text = text.rstrip("\n") + "\n\n" + old[old.index(_PREFIX) :]
    path.write_text(text)
    return path
