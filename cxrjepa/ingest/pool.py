"""Worker processes: every input is read in a separate, killable process with a time and a memory limit.

Inputs are hostile: a decoder can crash the process that runs it (a segfault, a C++ abort), loop forever
or allocate without bound. So, whatever the worker count (one included), work units run in long-lived
*decode workers* (:func:`cxrjepa.ingest.worker.serve`), started from a fork server (spawn where there is
none), never in the process that owns the run:

* each worker limits its own memory (``RLIMIT_DATA``: heap and anonymous mappings, i.e. what decoders
  allocate, not shared libraries) to what it holds after start plus the allowance (``Limits.memory_mb``);
  an allocation past it fails, the input is ledgered "decoding needed more memory than the limit", and the
  worker is replaced (a process that ran short of memory may stay short);
* before each input, and before each decoding plugin it tries, the worker tells this process (a message
  over its pipe), so a worker that dies or runs past the time limit on an input (it is then killed)
  names both;
* the unit is then run again in a fresh worker: an input that crashed a worker inside a decoding plugin
  gets the next plugin (as when a plugin raises); any other crashing or timed-out input is ledgered
  ("the decoder crashed on this input", "decoding took longer than the time limit") and not read again.
  The rerun uses the same decoder preference as every worker of the run, so an input's outcome never
  depends on the inputs it shares a unit with. Only the unit hit is rerun; the other workers go on.

Workers are reused for unit after unit (no process start per input). ``run_tasks`` / ``executor`` are the
plain process pool of the final copy step, which reads no input.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_any
from pathlib import Path
from typing import Any

from cxrjepa.core import console
from cxrjepa.core.errors import CxrjepaError
from cxrjepa.ingest import ledger
from cxrjepa.ingest.context import Context
from cxrjepa.ingest.staging import Unit
from cxrjepa.ingest.worker import init_pool_worker, serve

#: default seconds one input may take in a decode worker
TIME_LIMIT_S = 300.0
#: bounds of the automatic memory limit per decode worker (MB), see :func:`memory_limit_mb`
AUTO_MEMORY_MB = (1024, 4096)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _context() -> mp.context.BaseContext:
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["cxrjepa.ingest.worker", "cxrjepa.ingest.dicom", "SimpleITK"])
        return ctx
    return mp.get_context("spawn")


def warm_up() -> None:
    """Start the fork server now: it imports the decoders in the background (about a second) while the
    caller discovers the inputs, so decode workers start at once later. Nothing to do without one."""
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def single_threaded_decoders(workers: int, cores: int | None = None) -> bool:
    """Whether pool workers decode with one thread each: when they fill the machine (2 x workers > cores),
    where gdcm's threaded JPEG 2000 decoder would only oversubscribe the cores. With spare cores (at most
    half of them busy with workers) they keep the fastest decoders, threads included."""
    return 2 * workers > (cores or default_workers())


def memory_limit_mb(workers: int, requested: int = 0) -> int:
    """Memory each decode worker may allocate beyond what it holds after start: ``requested`` (MB) when
    positive, else 80 % of the machine's memory shared by the workers, within 1 to 4 GB."""
    if requested > 0:
        return int(requested)
    import psutil

    total_mb = psutil.virtual_memory().total // 2**20
    low, high = AUTO_MEMORY_MB
    return int(max(low, min(high, 0.8 * total_mb / max(1, workers))))


@dataclass(frozen=True)
class Limits:
    """Per decode worker: seconds for one input, MB of memory (see :func:`memory_limit_mb`)."""

    seconds: float = TIME_LIMIT_S
    memory_mb: int = AUTO_MEMORY_MB[1]


def executor(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_context(),
        initializer=init_pool_worker,
        initargs=(single_threaded_decoders(workers),),
    )


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[tuple],
    workers: int,
    on_done: Callable[[int, Any], None],
    pool: ProcessPoolExecutor | None = None,
) -> None:
    """Run ``fn(*task)`` for every task, at most ``2 * workers`` in flight; ``on_done(i, result)`` in the
    main process as they finish. Exceptions propagate (BrokenProcessPool included)."""
    if workers <= 1 or pool is None:
        for i, task in enumerate(tasks):
            on_done(i, fn(*task))
        return
    queue = deque(enumerate(tasks))
    running: dict[Future, int] = {}
    try:
        while queue or running:
            while queue and len(running) < 2 * workers:
                i, task = queue.popleft()
                running[pool.submit(fn, *task)] = i
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                i = running.pop(fut)
                on_done(i, fut.result())
    except BaseException:
        for fut in running:
            fut.cancel()
        raise


class WorkerError(CxrjepaError):
    """A decode worker failed in a way no input explains (twice on the same unit)."""


@dataclass
class _Job:
    """A unit and what earlier attempts learnt about its inputs (by position in the unit)."""

    unit: Unit
    #: inputs ledgered without being read again: position -> (reason, detail)
    settled: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: decoding plugins not to try again on an input: position -> plugin names
    avoid: dict[int, frozenset[str]] = field(default_factory=dict)
    #: worker deaths that no input could be blamed for (while starting or committing the unit)
    unexplained: int = 0


class _Worker:
    """One decode worker process and what it is doing."""

    def __init__(self, mpctx: mp.context.BaseContext, args: tuple):
        self.conn, child = mpctx.Pipe(duplex=True)
        self.proc = mpctx.Process(target=serve, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.job: _Job | None = None
        self.position: int | None = None  # the input being read (position in the unit), None between inputs
        self.plugin = ""  # the decoding plugin being tried on it
        self.since = time.monotonic()

    def give(self, job: _Job, out: str, ctx: Context) -> None:
        self.job, self.position, self.plugin, self.since = job, None, "", time.monotonic()
        try:
            self.conn.send((out, job.unit, ctx, job.settled, job.avoid))
        except OSError:  # it died before reading its first unit: seen as a crash by _follow
            pass

    def deadline(self, seconds: float) -> float:
        return self.since + seconds

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def _how_it_died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def process_units(
    out: Path,
    units: Iterable[Unit],
    ctx: Context,
    workers: int,
    on_done: Callable[[dict], None],
    limits: Limits | None = None,
    process: Callable | None = None,
) -> None:
    """Process ``units`` into the staging area in ``workers`` decode workers (see the module docstring);
    ``on_done(summary)`` runs here as each unit is committed.

    ``process`` replaces :func:`cxrjepa.ingest.process.process_input` in the workers (tests use it to crash,
    hang or allocate on purpose; it must be importable by name).
    """
    queue = deque(_Job(u) for u in units)
    if not queue:
        return
    limits = limits or Limits(memory_mb=memory_limit_mb(workers))
    mpctx = _context()
    args = (single_threaded_decoders(workers), limits.memory_mb, not console.settings.verbose, process)
    pool: list[_Worker] = []
    finished = False
    try:
        pool = [_Worker(mpctx, args) for _ in range(min(workers, len(queue)))]
        while queue or any(w.job is not None for w in pool):
            for w in pool:
                if w.job is None and queue:
                    w.give(queue.popleft(), str(out), ctx)
            busy = [w for w in pool if w.job is not None]
            timeout = min(w.deadline(limits.seconds) for w in busy) - time.monotonic()
            wait_any([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=max(0.0, timeout))
            for i, w in enumerate(pool):
                if w.job is None:
                    continue
                failure = _follow(w, on_done, limits)
                if failure is not None:
                    queue.appendleft(_learn(w, failure, limits))
                    w.kill()
                    pool[i] = _Worker(mpctx, args)
        finished = True
    finally:  # idle workers are told to stop; on an error or Ctrl-C, busy ones are killed at once
        for w in pool:
            w.stop()
        for w in pool:
            if finished:
                w.proc.join(2)
            w.kill()


def _follow(w: _Worker, on_done: Callable[[dict], None], limits: Limits) -> str | None:
    """Read what worker ``w`` said; returns None while it is fine, else how it failed ('crash', 'time' or
    'memory')."""
    try:
        while w.conn.poll():
            kind, value = w.conn.recv()
            if kind == "start":
                w.position, w.plugin, w.since = value, "", time.monotonic()
            elif kind == "plugin":
                w.plugin = value
            elif kind == "memory":
                w.position = value
                return "memory"
            elif kind == "commit":
                w.position, w.plugin, w.since = None, "", time.monotonic()
            elif kind == "done":
                w.job, w.position, w.plugin = None, None, ""
                on_done(value)
                return None
            elif kind == "error":  # not about an input (e.g. the disk is full): the run stops
                raise value
    except (EOFError, OSError):
        return "crash"
    if not w.proc.is_alive():
        return "crash"
    if time.monotonic() > w.deadline(limits.seconds):
        return "time"
    return None


def _learn(w: _Worker, failure: str, limits: Limits) -> _Job:
    """What a failed worker tells about its unit's inputs; returns the job to run again."""
    job, k = w.job, w.position
    assert job is not None
    if failure in ("crash", "memory"):
        w.proc.join(5)
    if k is None:  # not while reading an input: starting, or committing the unit
        job.unexplained += 1
        if job.unexplained >= 2:
            how = "ran past the time limit" if failure == "time" else f"died ({_how_it_died(w.proc.exitcode)})"
            raise WorkerError(
                f"An ingest worker {how} twice on work unit {job.unit.index} while reading no "
                "input; rerun the same command to resume."
            )
    elif failure == "time":
        job.settled[k] = (ledger.TIME_LIMIT, f"{limits.seconds:g} s")
    elif failure == "memory":
        job.settled[k] = (ledger.MEMORY_LIMIT, f"{limits.memory_mb} MB")
    elif w.plugin:
        job.avoid[k] = job.avoid.get(k, frozenset()) | {w.plugin}
    else:
        job.settled[k] = (ledger.WORKER_CRASHED, _how_it_died(w.proc.exitcode))
    return job
