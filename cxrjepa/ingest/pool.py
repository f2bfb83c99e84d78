"""Running work in worker processes: a bounded window of tasks, progress, and decoder-crash isolation.

With one worker everything runs in this process. With more, tasks go to a process pool started from a
fork server (workers fork from a clean process that has the decoders imported; no zarr/threads state is
inherited). A worker killed by a native decoder crash breaks the pool: the unfinished units are then run
one at a time in a fresh single worker, and an input that kills it again is ledgered as
"the decoder crashed on this input" while the rest of its unit is ingested.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from cxrjepa.ingest.context import Context
from cxrjepa.ingest.staging import Staging, Unit
from cxrjepa.ingest.worker import init_pool_worker, init_worker, run_unit


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _context() -> mp.context.BaseContext:
    if sys.platform.startswith("linux"):
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["cxrjepa.ingest.worker", "cxrjepa.ingest.dicom"])
        return ctx
    return mp.get_context("spawn")


def single_threaded_decoders(workers: int, cores: int | None = None) -> bool:
    """Whether pool workers decode with one thread each: when they fill the machine (2 x workers > cores),
    where gdcm's threaded JPEG 2000 decoder would only oversubscribe the cores. With spare cores (at most
    half of them busy with workers) they keep the fastest decoders, threads included."""
    return 2 * workers > (cores or default_workers())


def executor(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=init_pool_worker,
                               initargs=(single_threaded_decoders(workers),))


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


def process_units(
    out: Path, units: Iterable[Unit], ctx: Context, workers: int, on_done: Callable[[dict], None],
    task: Callable[..., dict] = run_unit,
) -> None:
    """Process ``units`` into the staging area (see :func:`run_tasks`), isolating decoder crashes.

    ``task`` is :func:`~cxrjepa.ingest.worker.run_unit` (tests pass a wrapper that crashes on purpose).
    """
    units = list(units)
    tasks = [(str(out), u, ctx) for u in units]
    if workers <= 1:
        init_worker()
        run_tasks(task, tasks, 1, lambda i, r: on_done(r))
        return
    staging = Staging(out)
    pool = executor(workers)
    try:
        run_tasks(task, tasks, workers, lambda i, r: on_done(r), pool)
        return
    except BrokenProcessPool:
        pass
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for u in units:  # isolation: unfinished units one at a time in a fresh single worker
        if staging.is_done(u.index):
            continue
        crashed: list[int] = []
        while True:
            staging.current_path(u.index).unlink(missing_ok=True)
            solo = executor(1)
            try:
                on_done(solo.submit(task, str(out), u, ctx, tuple(crashed)).result())
                break
            except BrokenProcessPool:
                cur = staging.current_path(u.index)
                k = int(cur.read_text()) if cur.is_file() else 0
                if k in crashed:  # cannot name the input: ledger the rest of the unit as crashed
                    crashed = list(range(len(u.items)))
                else:
                    crashed.append(k)
            finally:
                solo.shutdown(wait=False, cancel_futures=True)
