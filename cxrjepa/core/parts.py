"""Array-job parts: a stage's work split into N parts that run anywhere, then one finalize step
(docs/cluster.md).

``--part K/N`` runs part K of N, K from 0 to N-1 (``$SLURM_ARRAY_TASK_ID/N`` with ``sbatch --array=0-(N-1)``,
like nnU-Net's ``-part_id`` and torch ranks). Parts need no process group: each takes a deterministic share
of the work, writes only its own files inside the output folder, and can run at the same time as the others
(on other machines sharing the folder) or after them. A finalize step assembles the artifact, which is what
one run over the same inputs writes: same fingerprint, same contents.

Layout inside the output folder ``OUT``::

    OUT/manifest.yaml              status partial until finalized (written by the first part to arrive)
    OUT/parts/K-of-N/part.json     the part's record: the settings and inputs it ran with (its fingerprint),
                                   its status (running, complete), host, times, the stage's own details
    OUT/parts/K-of-N/...           the stage's partial store (ingest: its staging units)
    OUT/parts/.K-of-N.lock         the part's lock (cxrjepa.core.lock: flock on a sibling file)

Locks. Each part holds its own lock while it works, so parts never wait for each other. The artifact's
lock (``.OUT.lock``) is taken only for moments: by a part to plan, to create or join the partial artifact
and to take its own lock (:func:`join`), and by finalize for the whole assembly. A part that finds the
artifact's lock held by another part's join waits for it (a few seconds at most); anything else holding it
(a finalize, a whole run) is the usual one-sentence refusal. Whoever would clear the folder (a part with
other settings, ``--force`` on a finished artifact) or finalize it first checks that no part's lock is held.
On NFS, ``flock`` is arbitrated by the server (NFSv4, or NFSv3 with lockd); with ``nolock`` or
``local_lock=all`` mounts, locks are per host and parts on other hosts are not seen (docs/cluster.md).

Which part does what: :func:`part_of` hashes a key (ingest: an input's path relative to its source root;
embed uses contiguous ranges of row units instead) into one of N parts, so a part's share depends neither
on walk order nor on file-system timing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrjepa.core import console
from cxrjepa.core.artifact import COMPLETE as ARTIFACT_COMPLETE
from cxrjepa.core.artifact import Artifact, ArtifactBuilder, begin, plan_artifact, read_manifest
from cxrjepa.core.atomic import atomic_write_json
from cxrjepa.core.errors import EXIT_FAILURE, CxrjepaError, UsageError
from cxrjepa.core.lock import Holder, OutputLockedError, lock_path, output_lock, read_holder

PARTS = "parts"
RECORD = "part.json"
FORMAT = "cxrjepa.part/1"
RUNNING = "running"
COMPLETE = "complete"
#: how long a part waits for another part's join to release the artifact's lock (seconds)
JOIN_WAIT_S = 120.0
_NAME = re.compile(r"(\d+)-of-(\d+)")


class PartsIncompleteError(CxrjepaError):
    """Finalize found a part missing, unfinished or made with other settings (exit 1)."""

    exit_code = EXIT_FAILURE


@dataclass(frozen=True, order=True)
class Part:
    """Part ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(
                f"--part {self.index}/{self.count}: parts are numbered 0 to {max(self.count, 1) - 1} "
                f"(sbatch --array=0-{max(self.count, 1) - 1})."
            )

    @property
    def name(self) -> str:
        """The part's folder name: ``K-of-N``."""
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        return part_of(key, self.count) == self.index


def parse_part(text: str | Part) -> Part:
    """``"K/N"`` -> :class:`Part` (K from 0 to N-1); one sentence for anything else."""
    if isinstance(text, Part):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise UsageError(
            f"--part takes K/N (part K of N parts, K from 0 to N-1, e.g. --part "
            f"$SLURM_ARRAY_TASK_ID/8 with sbatch --array=0-7), not '{text}'."
        )
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise UsageError(f"--part {text}: the number of parts must be at least 1.")
    return Part(k, n)


def part_of(key: str, count: int) -> int:
    """The part (0 .. count-1) that owns ``key``: a stable hash (SHA-256), the same on every machine, Python
    version and run (Python's own ``hash`` of a string is salted per process)."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parts_root(out: str | Path) -> Path:
    return Path(out) / PARTS


def part_dir(out: str | Path, part: Part) -> Path:
    return parts_root(out) / part.name


def part_names(parts: Sequence[Part]) -> str:
    """``1/4``, ``1/4 and 3/4``, ``0/4, 1/4 and 3/4``."""
    names = [str(p) for p in sorted(parts)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def array_indices(parts: Sequence[Part]) -> str:
    """The ``sbatch --array=`` value that reruns ``parts``: ``1,3``."""
    return ",".join(str(p.index) for p in sorted(parts))


# ------------------------------------------------------------------ records


def read_record(folder: str | Path) -> dict | None:
    """A part's record (``part.json``), None when it has none or it cannot be read."""
    import json

    try:
        data = json.loads((Path(folder) / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def write_record(folder: str | Path, record: Mapping[str, Any]) -> None:
    atomic_write_json(Path(folder) / RECORD, dict(record))


def new_record(part: Part, builder_like: PartSettings, settings: Mapping[str, Any] | None = None) -> dict:
    """The record a part writes when it starts (status ``running``)."""
    return {
        "format": FORMAT,
        "kind": builder_like.kind,
        "part": part.index,
        "parts": part.count,
        "status": RUNNING,
        "fingerprint": builder_like.fingerprint,
        "params": builder_like.params,
        "inputs": builder_like.inputs,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": dict(settings or {}),
    }


def records(out: str | Path) -> dict[Part, dict | None]:
    """Every part folder under ``OUT/parts`` and its record (None: no readable record yet)."""
    root = parts_root(out)
    found: dict[Part, dict | None] = {}
    if not root.is_dir():
        return found
    for d in root.iterdir():
        m = _NAME.fullmatch(d.name)
        if m and d.is_dir():
            try:
                part = Part(int(m.group(1)), int(m.group(2)))
            except UsageError:
                continue
            found[part] = read_record(d)
    return found


def latest_count(found: Mapping[Part, dict | None]) -> int | None:
    """The number of parts of the newest split in ``found`` (the one whose record started last)."""
    if not found:
        return None
    return max(found, key=lambda p: ((found[p] or {}).get("started", ""), p.count)).count


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """What makes record ``a`` differ from ``b`` (their params and inputs), in words: ``other settings (size),
    other inputs (source[0])``, ``another salt``."""
    what = []
    pa, pb = a.get("params") or {}, b.get("params") or {}
    keys = sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k))
    if keys:
        what.append(f"other settings ({', '.join(keys)})")
    ia = {str(i.get("name")): i.get("fingerprint") for i in a.get("inputs") or []}
    ib = {str(i.get("name")): i.get("fingerprint") for i in b.get("inputs") or []}
    names = sorted(k for k in set(ia) | set(ib) if ia.get(k) != ib.get(k))
    if "salt" in names:
        names.remove("salt")
        what.append("another salt")
    if names:
        what.append(f"other inputs ({', '.join(names)})")
    return ", ".join(what) or "another version of cxrjepa"


# ------------------------------------------------------------------ locks


def running(folder: str | Path) -> Holder | None:
    """The holder of the lock of ``folder`` (a part's folder) while it is held, else None.

    Probes with a shared, non-blocking ``flock`` on a read-only descriptor (what NFS maps to a POSIX read
    lock), so nothing is written and a free lock is left as it was."""
    try:
        fd = os.open(lock_path(folder), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return read_holder(folder) or Holder("another host", 0, "", "part")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def running_parts(out: str | Path) -> dict[Part, Holder]:
    """The parts of ``out`` whose lock is held now (they are working)."""
    root = parts_root(out)
    found: dict[Part, Holder] = {}
    if not root.is_dir():
        return found
    for f in root.glob(".*-of-*.lock"):
        m = _NAME.fullmatch(f.name[1 : -len(".lock")])
        if not m:
            continue
        try:
            part = Part(int(m.group(1)), int(m.group(2)))
        except UsageError:
            continue
        holder = running(part_dir(out, part))
        if holder is not None:
            found[part] = holder
    return found


def ensure_idle(out: str | Path, doing: str, but: Part | None = None) -> None:
    """Refuse (exit 2, like any output another command is writing) while a part of ``out`` other than
    ``but`` works: ``doing`` says what would have been done (e.g. "finalize it")."""
    busy = {p: h for p, h in running_parts(out).items() if p != but}
    if busy:
        who = "; ".join(f"{p} ({h.words()})" for p, h in sorted(busy.items()))
        raise OutputLockedError(
            f"Cannot {doing}: part{'s' if len(busy) > 1 else ''} {who} of '{out}' "
            f"{'are' if len(busy) > 1 else 'is'} still running; wait for "
            f"{'them' if len(busy) > 1 else 'it'} to finish."
        )


def _is_part_join(holder: Holder | None) -> bool:
    return holder is not None and " --part " in holder.stage


@contextlib.contextmanager
def artifact_lock(out: str | Path, stage: str, wait_s: float = JOIN_WAIT_S) -> Iterator[None]:
    """Hold the artifact's lock for ``stage``; while another part holds it only to join, wait (up to
    ``wait_s``); any other holder is refused at once (:class:`OutputLockedError`, exit 2)."""
    deadline = time.monotonic() + wait_s
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(output_lock(out, stage))
                break
            except OutputLockedError:
                holder = read_holder(out)  # None: released (its file unlinked) since we tried: try again
                if time.monotonic() > deadline or (holder is not None and not _is_part_join(holder)):
                    raise
                time.sleep(random.uniform(0.05, 0.3))
        yield


# ------------------------------------------------------------------ joining


@dataclass
class PartSettings:
    """What a part runs with, as the artifact sees it (kind, params, inputs, fingerprint)."""

    kind: str
    params: dict
    inputs: list[dict]
    fingerprint: str = ""


@dataclass
class Joined:
    """A part's place in the artifact: the artifact's builder when this part created it, the finished
    artifact when there is nothing to do, and the part's lock (released by :meth:`release`)."""

    part: Part
    folder: Path
    settings: PartSettings
    created: ArtifactBuilder | None = None
    existing: Artifact | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def release(self) -> None:
        self._stack.close()

    def __enter__(self) -> Joined:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def join(
    out: str | Path,
    part: Part,
    *,
    kind: str,
    stage: str,
    params: Any,
    inputs: Sequence[Mapping[str, Any]],
    version: int,
    options: Mapping[str, Any] | None = None,
    force: bool = False,
    ready: Callable[[dict], bool] = lambda manifest: True,
    create: Callable[[ArtifactBuilder], None] = lambda builder: None,
) -> Joined:
    """Take part ``part`` of the artifact ``out``, under the artifact's lock for a moment (see the module
    docstring).

    * A complete artifact with this fingerprint: nothing to do (``existing``), unless ``force``.
    * A partial artifact with this fingerprint that is ``ready`` (``ready(manifest)``): joined as it is.
    * A partial artifact with other settings or inputs that holds parts: refused (one sentence naming what
      differs), unless ``force``; one mistyped array task never wipes the others' work.
    * Else (no artifact, a complete one with other settings or inputs, ``force``, a partial one its creator
      left unready): the artifact is (re)created with :func:`begin`, once no part of it is running, and
      ``create(builder)`` prepares what every part shares (embed: the arrays); ``created`` is the builder.

    Then this part's lock is taken; it is held until :meth:`Joined.release`.
    """
    out = Path(out)
    from cxrjepa.core.artifact import compute_fingerprint
    from cxrjepa.core.config import to_dict

    params_d = to_dict(params)
    settings = PartSettings(
        kind, params_d, [dict(i) for i in inputs], compute_fingerprint(kind, params_d, inputs, version)
    )
    joined = Joined(part, part_dir(out, part), settings)
    with artifact_lock(out, f"{stage} --part {part}"):
        plan = plan_artifact(out, kind, params_d, inputs, version=version)
        if plan.action == "refuse":
            raise UsageError(f"{plan.reason}; choose another --out or pass --force.")
        if plan.action == "skip" and not force:
            joined.existing = Artifact(out, plan.existing or {})
            return joined
        if plan.action == "overwrite" and not force and (plan.existing or {}).get("status") != ARTIFACT_COMPLETE:
            others = sorted(records(out))
            if others:  # an unfinished split with other settings: never wiped by one part's mistake
                what = differences(plan.existing or {}, {"params": params_d, "inputs": list(inputs)})
                raise UsageError(
                    f"'{out}' holds parts ({part_names(others)}) made with {what} than part {part}; run "
                    f"it with the same settings and inputs as them, or pass --force to start '{out}' "
                    "over with these."
                )
        if plan.action != "resume" or not ready(plan.existing or {}):
            if plan.action != "create":
                ensure_idle(out, f"replace '{out}' ({plan.reason})" if plan.action == "overwrite" else f"redo '{out}'")
            joined.created = begin(
                out, kind, params_d, inputs, options=options, version=version, force=plan.action in ("skip", "resume")
            )
            create(joined.created)
        joined._stack.enter_context(output_lock(joined.folder, f"{stage} part {part}"))
    return joined


def finish_record(folder: str | Path, record: dict, **extra: Any) -> dict:
    """Mark a part's record complete (written atomically: the part's "done" mark)."""
    record = {**record, **extra, "status": COMPLETE, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_record(folder, record)
    return record


def incomplete(found: Mapping[Part, dict | None], count: int, fingerprint: str) -> dict[Part, str]:
    """The parts of a ``count``-part split that are not complete with ``fingerprint``, and why."""
    why: dict[Part, str] = {}
    for k in range(count):
        p = Part(k, count)
        rec = found.get(p)
        if rec is None:
            why[p] = "missing" if p not in found else "never started its work"
        elif rec.get("fingerprint") != fingerprint:
            why[p] = "made with other settings or inputs"
        elif rec.get("status") != COMPLETE:
            why[p] = "interrupted"
    return why


def missing_sentence(
    out: str | Path,
    why: Mapping[Part, str],
    command: str,
    reference: Mapping[str, Any] | None = None,
    found: Mapping[Part, dict | None] | None = None,
) -> str:
    """One sentence naming the parts to rerun (and how), for :class:`PartsIncompleteError`."""
    parts = sorted(why)
    count = parts[0].count
    details = []
    for p in parts:
        reason = why[p]
        if reason == "made with other settings or inputs" and reference is not None and found and found.get(p):
            reason = f"made with {differences(found[p], reference)} than the others"
        details.append(f"{p} {reason}")
    noun = "Part" if len(parts) == 1 else "Parts"
    return (
        f"{noun} {part_names(parts)} of '{out}' {'is' if len(parts) == 1 else 'are'} not complete "
        f"({'; '.join(details)}); rerun {'it' if len(parts) == 1 else 'them'} with the same command "
        f"('{command} ... --part K/{count}', e.g. sbatch --array={array_indices(parts)} ...) and finalize again."
    )


def maybe_finalize(out: str | Path, part: Part, fingerprint: str, finalize: Callable[[], Any], command: str) -> Any:
    """After part ``part`` completed: finalize when every part of its split is complete (the last part to
    finish does it), else say which parts are still to come. Returns what ``finalize`` returned, or None.

    Another process already finalizing (or a part still running) is not an error here: it will finish the
    artifact, or the explicit finalize step will."""
    found = records(out)
    left = incomplete(found, part.count, fingerprint)
    if left:
        console.info(
            f"Part {part} is complete; waiting for {len(left)} more ({part_names(list(left))}). The last "
            f"part to finish finalizes '{out}' (or run '{command} --finalize --out {out}')."
        )
        return None
    try:
        return finalize()
    except OutputLockedError as exc:
        console.info(f"Part {part} is complete; not finalizing here: {exc.message}")
        return None


def finalize_start(out: Path, kind: str, noun: str, up_to_date: str, nothing: str) -> tuple[Artifact | dict, dict]:
    """The opening every finalize shares, under the artifact's lock. Another kind at ``out`` is a usage error
    (``noun``: what should be there); an artifact already complete is returned with ``up_to_date`` said (its
    leftover parts tidied away once none runs); no parts is :class:`PartsIncompleteError` with ``nothing``;
    a running part refuses (exit 2). Returns ``(Artifact, {})`` when complete, else ``(manifest, records)``."""
    manifest = read_manifest(out) if out.is_dir() else None
    found = records(out)
    if manifest is not None and manifest.get("kind") != kind:
        raise UsageError(f"'{out}' holds {manifest.get('kind')} artifact, not {noun}.")
    if manifest is not None and manifest.get("status") == ARTIFACT_COMPLETE:
        if found:
            ensure_idle(out, f"tidy '{out}'")
            shutil.rmtree(parts_root(out), ignore_errors=True)
        console.info(up_to_date)
        return Artifact(out, manifest), {}
    if manifest is None or not found:
        raise PartsIncompleteError(nothing)
    ensure_idle(out, f"finalize '{out}'")
    return manifest, found
