"""Code that runs inside ingest worker processes.

Decode workers (:func:`serve`, driven by pool.py) are started from a fork server (spawn where there is
none), single-threaded in OpenCV, SimpleITK and BLAS so N workers use N cores, with a memory limit and
their output silenced. Each processes whole work units (staging.py) and, in the final step, pool workers
copy whole shards of the final array (writer.py): no two workers ever write the same file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from cxrjepa.ingest import ledger
from cxrjepa.ingest.context import Context
from cxrjepa.ingest.ledger import Record
from cxrjepa.ingest.process import process_input
from cxrjepa.ingest.staging import Staging, Unit, UnitWriter
from cxrjepa.ingest.table import Sample


def init_worker() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    # codec chatter on stderr (FFmpeg, OpenCV) is noise for users and may name files: errors go to the ledger
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    import cv2

    cv2.setNumThreads(1)
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:
        pass
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except Exception:
        pass


def init_pool_worker(single_threaded: bool = True) -> None:
    """A pool worker: :func:`init_worker`, and (when the workers fill the cores) decoders that use one
    thread each (see :func:`cxrjepa.ingest.dicom_pixels.prefer_single_threaded`)."""
    from cxrjepa.ingest.dicom_pixels import prefer_single_threaded

    init_worker()
    prefer_single_threaded(single_threaded)


def limit_memory(megabytes: int) -> None:
    """Let this process allocate at most ``megabytes`` MB more than it holds now, by capping its data segment
    (``RLIMIT_DATA``: heap and private anonymous mappings, which is where decoders allocate; shared libraries
    and file mappings do not count). What a worker holds after start (its libraries' data, about 300 MB) is
    not part of the allowance. Past it an allocation fails: Python raises ``MemoryError``, which the input's
    ledger row reports."""
    import resource

    import psutil

    if megabytes <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = psutil.Process().memory_info().data + megabytes * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _silence_output() -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so native libraries too) to the
    null device: decoders print aborts and warnings that can quote file content, and the run's console
    belongs to the main process. ``--verbose`` keeps them."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def serve(conn, single_threaded: bool, memory_mb: int, quiet: bool, process: Callable | None = None) -> None:
    """A decode worker's life (see :mod:`cxrjepa.ingest.pool`): run the units sent over ``conn`` one after
    the other, reporting progress on the same pipe, until told to stop (``None``) or the pipe closes.

    Every message is a pair: ``("start", k)`` before input ``k`` of the unit, ``("plugin", name)`` before a
    decoding plugin is tried (``""`` after it), ``("memory", k)`` when input ``k`` ran out of memory (the
    worker then exits), ``("commit", None)`` after the last input, ``("done", summary)`` once the unit is
    durable, ``("error", exception)`` when the unit failed for a reason no input explains (the run then
    stops).
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which stops the workers
    if quiet:
        _silence_output()
    limit_memory(memory_mb)
    init_pool_worker(single_threaded)

    def report(kind: str, value: object = None) -> None:
        conn.send((kind, value))

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        out, unit, ctx, settled, avoid = task
        try:
            summary = run_unit(out, unit, ctx, settled, avoid, report, process or process_input)
        except BaseException as exc:
            report("error", _portable(exc))
            continue
        report("done", summary)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (to be raised in the main process), else a RuntimeError naming its class."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__} in an ingest worker")


def run_unit(
    out: str,
    unit: Unit,
    ctx: Context,
    settled: Mapping[int, tuple[str, str]] | None = None,
    avoid: Mapping[int, frozenset[str]] | None = None,
    report: Callable[[str, object], None] | None = None,
    process: Callable = process_input,
) -> dict:
    """Process one work unit into the staging folder; returns its summary (also written as its done mark).

    When the unit runs again after a worker died on it, ``settled`` holds the inputs (positions in the unit)
    to ledger without reading them again, with their reason and detail, and ``avoid`` the decoding plugins
    not to try again on an input. ``report(kind, value)`` tells the pool what is being read (see
    :func:`serve`).
    """
    from cxrjepa.ingest.dicom_pixels import PluginWatch, watch_plugins

    settled = settled or {}
    avoid = avoid or {}
    staging = Staging(Path(out))
    writer = UnitWriter(staging, unit.index)
    rows: list[dict] = []
    records: list[dict] = []
    try:
        for k, item in enumerate(unit.items):
            order = unit.order(k)
            if k in settled:
                reason, detail = settled[k]
                rec = Record(item.rel, item.source_index, ledger.REJECTED, reason, detail)
                records.append({**rec.to_json(), "_order": order})
                continue
            if report is not None:
                report("start", k)
                watch = PluginWatch(lambda name: report("plugin", name), avoid.get(k, frozenset()))
            else:
                watch = PluginWatch(avoid=avoid.get(k, frozenset()))
            try:
                with watch_plugins(watch):
                    result = process(item, ctx)
            except MemoryError:  # past the worker's memory limit (process_input ledgers its own)
                result = Record(item.rel, item.source_index, ledger.REJECTED, ledger.MEMORY_LIMIT)
            if report is not None and isinstance(result, Record) and result.reason == ledger.MEMORY_LIMIT:
                # a process that ran out of memory may stay short of it: the pool ledgers this input and
                # redoes the unit in a fresh worker, so no later input pays for this one
                writer.abort()
                report("memory", k)
                os._exit(3)
            if isinstance(result, Sample):
                row = result.row
                row["_local_start"] = writer.append(result.frames)
                if result.mask is not None:
                    row["_mask_local"] = writer.append_mask(result.mask)
                row["_order"] = order
                rows.append(row)
            else:
                records.append({**result.to_json(), "_order": order})
        if report is not None:
            report("commit", None)
        summary = {"unit": unit.index, "frames": writer.frames, "rows": rows, "records": records}
        writer.commit(summary)
    except BaseException:
        writer.abort()
        raise
    return {"unit": unit.index, "inputs": len(unit.items), "samples": len(rows), "records": len(records)}


def copy_shards(
    zarr_path: str,
    stores: list[str],
    size: int,
    dtype: str,
    shard: int,
    table: np.ndarray,
    shard_range: tuple[int, int],
    mask_path: str | None = None,
    mask_table: np.ndarray | None = None,
) -> int:
    """Write the final array's shards ``shard_range`` (whole shards, one call each) from the unit files,
    and the same shards of the masks array when the dataset has one.

    ``stores`` are the folders that hold the staging areas (the artifact, or each part of an array job); ``table`` rows are
    (global_start, count, store, unit, local_start) of the kept samples, sorted by global_start;
    ``mask_table`` the same for the samples that have a mask (local_start into the unit's mask file).
    """
    import zarr

    arr = zarr.open_array(zarr_path, mode="r+")
    marr = zarr.open_array(mask_path, mode="r+") if mask_path is not None else None
    total = int(arr.shape[0])
    stagings = [Staging(Path(d)) for d in stores]
    maps: dict[tuple[int, int, str], np.ndarray] = {}
    written = 0
    for s in range(*shard_range):
        f0, f1 = s * shard, min((s + 1) * shard, total)
        if f1 <= f0:
            continue
        arr[f0:f1] = _fill_shard(stagings, maps, table, f0, f1, size, dtype, "images")
        if marr is not None and mask_table is not None and len(mask_table):
            buf = _fill_shard(stagings, maps, mask_table, f0, f1, size, "uint8", "masks")
            if buf.any():  # an all-background shard is the fill value: nothing to write
                marr[f0:f1] = buf
        written += f1 - f0
    return written


def _fill_shard(
    stagings: list[Staging], maps: dict, table: np.ndarray, f0: int, f1: int, size: int, dtype: str, kind: str
) -> np.ndarray:
    """Frames ``f0:f1`` of the final array from the unit files; frames no row covers stay 0 (masks)."""
    buf = (
        np.zeros((f1 - f0, size, size), dtype=dtype)
        if kind == "masks"
        else np.empty((f1 - f0, size, size), dtype=dtype)
    )
    starts = table[:, 0]
    r = max(0, int(np.searchsorted(starts, f0, side="right")) - 1)
    while r < len(table) and int(starts[r]) < f1:
        g, c, st, u, local = (int(v) for v in table[r])
        lo, hi = max(g, f0), min(g + c, f1)
        if hi > lo:
            src = maps.get((st, u, kind))
            if src is None:
                if len(maps) > 8:
                    maps.clear()
                src = maps[(st, u, kind)] = stagings[st].frames(u, size, dtype, kind)
            buf[lo - f0 : hi - f0] = src[local + (lo - g) : local + (hi - g)]
        r += 1
    return buf
