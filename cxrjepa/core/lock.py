"""One writer per output folder: the lock every stage takes before it reads its output to plan, clears it or
writes to it (docs/artifacts.md, "One writer at a time").

The lock of ``OUT`` is ``fcntl.flock`` on the sibling file ``.OUT.lock`` (next to the folder, not in it, so
that clearing or replacing the folder can never remove it). The file holds a one-line JSON record of the
holder (host, pid, start time, stage), which a refused second writer prints in its one sentence (exit 2).

Why ``flock`` on a sibling file rather than ``open(O_CREAT | O_EXCL)``: the kernel (or, on NFS, the server's
lock manager) releases the lock when its holder dies, however it dies, so a lock left behind by a killed
run is never mistaken for a live one and never needs guessing from a pid (pids are reused, and a pid on
another host cannot be checked). Taking over such a stale lock is one ``flock`` call, atomic by
construction: of two processes that find the same stale lock, exactly one gets it. On NFS, Linux maps
``flock`` to POSIX byte-range locks that the server arbitrates (NFSv4, or NFSv3 with lockd); a mount with
``nolock`` or ``local_lock=all`` keeps locks per host, and then only writers on the same host exclude each
other.

The file is removed on release while still locked; a process that opened the old file in between sees
that the path no longer names the inode it locked and starts again, so two holders can never hold two
different files of the same path.

Re-entrant: a process that holds the lock (the pipeline runner around a stage) takes it again for free,
and so do its descendants (torchrun workers of a launcher that holds it, forked pool workers): a lock whose
record names a live ancestor process on this host counts as held. A torchrun rank other than 0 never
takes a lock (rank 0, or the launcher above it, writes the artifact).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import functools
import inspect
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrjepa.core.errors import EXIT_USAGE, CxrjepaError, note_space_error

SUFFIX = ".lock"


class OutputLockedError(CxrjepaError):
    """Another process is writing to the output folder."""

    exit_code = EXIT_USAGE


class LockLostError(CxrjepaError):
    """The lock file was removed or replaced while this process held it."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock: the record inside the lock file."""

    host: str
    pid: int
    started: str
    stage: str

    def words(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"

    def alive_here(self) -> bool | None:
        """Whether the holder still runs (None when it ran on another host: that cannot be checked)."""
        if self.host != socket.gethostname():
            return None
        return _pid_alive(self.pid)


def lock_path(out: str | Path) -> Path:
    """The lock file of the output folder ``out``: ``.NAME.lock`` next to it (symlinks resolved)."""
    out = Path(out).resolve()
    if out.parent == out:
        raise CxrjepaError(
            f"'{out}' cannot be an output folder (it has no parent folder for its lock file).", exit_code=EXIT_USAGE
        )
    return out.parent / f".{out.name}{SUFFIX}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _read_record(fd: int) -> Holder | None:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode("utf-8"))
        return Holder(str(data["host"]), int(data["pid"]), str(data["started"]), str(data.get("stage", "stage")))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def read_holder(out: str | Path) -> Holder | None:
    """The record in ``out``'s lock file (a live holder, or the last one if it died), or None."""
    try:
        fd = os.open(lock_path(out), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_record(fd)
    finally:
        os.close(fd)


def _torchrun_rank() -> int | None:
    rank = os.environ.get("RANK")
    if rank is None or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(rank)
    except ValueError:
        return None


def _ancestor_pids() -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process().parents()}
    except psutil.Error:
        return set()


class OutputLock:
    """The lock of one output folder, held by this process (see the module docstring)."""

    def __init__(self, out: str | Path, stage: str):
        self.out = Path(out)
        self.path = lock_path(out)
        self.stage = stage
        self.fd: int | None = None
        self.pid = os.getpid()
        #: the record of a holder that died without releasing (the lock was taken over), if any
        self.previous: Holder | None = None
        self.depth = 0
        #: folders created to hold the lock file (removed again on release when still empty)
        self.made: list[Path] = []

    # ------------------------------------------------------------------ taking and giving back
    def acquire(self) -> None:
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.made = missing  # deepest first
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = self._wait_for_record(fd)
                os.close(fd)
                raise OutputLockedError(self._held_sentence(holder)) from None
            try:
                same = os.stat(self.path)
            except FileNotFoundError:
                same = None
            mine = os.fstat(fd)
            if same is None or (same.st_dev, same.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(fd)  # released and removed while we opened it: take the new file
                continue
            break
        previous = _read_record(fd)
        self.previous = previous if previous is not None and previous.pid != os.getpid() else None
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(), "stage": self.stage}
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self.fd = fd
        self.pid = os.getpid()

    def _wait_for_record(self, fd: int) -> Holder | None:
        """The holder's record; the winner writes it just after locking, so an empty or dead one is re-read."""
        holder = None
        for _ in range(40):
            holder = _read_record(fd)
            if holder is not None and holder.alive_here() is not False:
                return holder
            time.sleep(0.05)
        return holder

    def _held_sentence(self, holder: Holder | None) -> str:
        who = f"another cxrjepa {holder.stage} ({holder.words()})" if holder else "another cxrjepa process"
        return (
            f"'{self.out}' is being written by {who}; wait for it to finish or choose another --out "
            f"(lock file {self.path})."
        )

    def still_held(self) -> bool:
        """Whether the lock file at the path is still the one this process locked."""
        if self.fd is None:
            return False
        try:
            st, mine = os.stat(self.path), os.fstat(self.fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def check(self) -> None:
        """Raise :class:`LockLostError` when the lock file was removed or replaced under this process."""
        if self.fd is not None and not self.still_held():
            raise LockLostError(
                f"The lock file {self.path} of '{self.out}' was removed or replaced while this stage was writing, "
                "so another process may have written there too; rerun the stage with --force."
            )

    def release(self) -> None:
        if self.fd is None or os.getpid() != self.pid:  # a forked child never releases its parent's lock
            return
        try:
            if self.still_held():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.close(self.fd)  # closing the last descriptor of the file releases the flock
            self.fd = None
            for folder in self.made:  # a command that failed early leaves no empty parent folders behind
                try:
                    folder.rmdir()
                except OSError:
                    break


#: locks this process holds, by lock-file path (re-entrant)
_HELD: dict[Path, OutputLock] = {}


def held_lock(out: str | Path) -> OutputLock | None:
    """The lock of ``out`` if this process holds it."""
    lock = _HELD.get(lock_path(out))
    return lock if lock is not None and lock.fd is not None else None


def _held_by_ancestor(path: Path) -> bool:
    """The lock file names a live ancestor of this process on this host, which holds the lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        holder = _read_record(fd)
        if holder is None or holder.host != socket.gethostname() or holder.pid not in _ancestor_pids():
            return False
        try:  # the record could be left over from a dead run whose pid an ancestor now has: it must be locked
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_lock(out: str | Path, stage: str) -> Iterator[OutputLock | None]:
    """Hold the lock of the output folder ``out`` for ``stage`` (re-entrant; see the module docstring).

    Raises :class:`OutputLockedError` (exit 2) naming the holder when another process writes there.
    Yields the lock, or None when a torchrun rank other than 0 or a descendant of the holder asked.
    """
    try:
        with _output_lock(out, stage) as lock:
            yield lock
    except OSError as exc:  # a full disk names the folder being written when the error does not
        note_space_error(exc, out=out)
        raise


@contextlib.contextmanager
def _output_lock(out: str | Path, stage: str) -> Iterator[OutputLock | None]:
    path = lock_path(out)
    lock = _HELD.get(path)
    if lock is not None and lock.fd is not None:
        lock.depth += 1
        try:
            yield lock
        finally:
            lock.depth -= 1
        return
    rank = _torchrun_rank()
    if (rank is not None and rank != 0) or _held_by_ancestor(path):
        yield None
        return
    lock = OutputLock(out, stage)
    lock.acquire()
    if lock.previous is not None:
        from cxrjepa.core import console

        alive = lock.previous.alive_here()
        console.info(
            f"Took over the lock of '{out}' left by {lock.previous.words()}"
            + (", which is no longer running." if alive is False else ", which no longer holds it.")
        )
    _HELD[path] = lock
    lock.depth = 1
    try:
        yield lock
    finally:
        lock.depth -= 1
        if lock.depth == 0:
            _HELD.pop(path, None)
            lock.release()


def check_lock(out: str | Path) -> None:
    """Before a stage writes its complete manifest: the lock it holds on ``out`` must still be its own."""
    lock = held_lock(out)
    if lock is not None:
        lock.check()


def locks_output(stage: str) -> Callable:
    """Decorate a stage function ``fn(out, ..., dry_run=False)``: it runs holding the lock of ``out`` (dry runs
    take no lock)."""

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind_partial(*args, **kwargs)
            if bound.arguments.get("dry_run"):
                return fn(*args, **kwargs)
            with output_lock(bound.arguments["out"], stage):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
