"""Fingerprints: short stable hashes of parameters, files and folders."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PREFIX = "sha256:"


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def hash_obj(data: Any) -> str:
    """Fingerprint of a JSON-able object (order of dict keys does not matter)."""
    return PREFIX + hashlib.sha256(canonical_json(data).encode()).hexdigest()[:32]


def hash_bytes(data: bytes) -> str:
    return PREFIX + hashlib.sha256(data).hexdigest()[:32]


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return PREFIX + h.hexdigest()[:32]


def hash_files(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """Content hash of several files (names relative to ``root`` count, so renames change it)."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        name = str(p.relative_to(root)) if root else p.name
        h.update(os.fsencode(name))
        h.update(hash_file(p).encode())
    return PREFIX + h.hexdigest()[:32]


def fingerprint_path(path: str | Path) -> str:
    """Cheap fingerprint of raw input (a file or a folder tree): names, sizes and modification times.

    Raw archives can hold millions of files, so their bytes are not read; a changed, added or removed
    file changes the fingerprint (as in DVC's and make's view of staleness). Names are hashed as the bytes
    the file system holds (:func:`os.fsencode`), so names that are not UTF-8 (legal on Linux) work too.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        st = path.stat()
        h.update(os.fsencode(path.name) + f"|{st.st_size}|{st.st_mtime_ns}".encode())
    elif path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                rel = os.path.relpath(full, path)
                h.update(os.fsencode(rel) + f"|{st.st_size}|{st.st_mtime_ns}\n".encode())
    else:
        h.update(b"<missing>")
    return PREFIX + h.hexdigest()[:32]
