"""Checked, typed views of what an artifact holds: its manifest's ``counts`` and ``contents``, its own files.

Each artifact kind describes those parts as dataclasses in its torch-free layout module
(``data/layout.py``, ``pretrain/layout.py``, ``embed/store.py``, ``probe/layout.py``). Writer and readers use
the same classes: the writer checks what it is about to write with :func:`check_written`, so a renamed field
fails the writer's own tests; a reader parses with :func:`parse` and gets dataclasses instead of
``.get(...) or {}`` chains, or one sentence naming the field that does not match and the command that rewrites
the artifact. Fields not described are allowed and ignored (a newer writer may add some).

Validation is pydantic's (lax mode: ``"3"`` is accepted for an integer); messages never quote values.
"""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

from cxrjepa.core.errors import ArtifactError

T = TypeVar("T")


class SchemaError(ArtifactError):
    """An artifact's manifest part or file does not have the fields this version of cxrjepa reads."""


@cache
def _adapter(cls: type):
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def problems(cls: type[T], data: Any) -> tuple[T | None, list[str]]:
    """``data`` as ``cls`` and an empty list, or ``None`` and what does not match (field paths, no values)."""
    from pydantic import ValidationError

    try:
        return _adapter(cls).validate_python(data), []
    except ValidationError as exc:
        out = []
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            where = _field(err["loc"])
            if err["type"] == "missing":
                out.append(f"'{where}' is missing")
            else:
                out.append(f"'{where}': {err['msg'][:1].lower()}{err['msg'][1:]}")
        return None, out


def parse(cls: type[T], data: Any, *, what: str, rerun: str | None) -> T:
    """``data`` (a manifest part or a file's content) as ``cls``, or a :class:`SchemaError`.

    ``what`` names the thing read ("the probe 'P' (metrics.json)"), ``rerun`` the command that rewrites it.
    """
    value, errs = problems(cls, data)
    if value is not None:
        return value
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    fix = f"; rerun '{rerun}' with --force to rewrite it" if rerun else ""
    raise SchemaError(
        f"{what[:1].upper()}{what[1:]} does not match what this version of cxrjepa reads: {errs[0]}{more}{fix}."
    )


def check_written(cls: type[T], data: Any, *, what: str) -> T:
    """What a stage is about to write, checked against the schema its readers use (a bug if it fails)."""
    value, errs = problems(cls, data)
    if value is None:
        raise RuntimeError(
            f"cxrjepa is about to write {what} that its own readers reject: {'; '.join(errs)}. "
            "This is a bug in cxrjepa; please report it."
        )
    return value
