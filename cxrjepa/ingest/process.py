"""One input -> a :class:`Sample` (with its paired mask, if any) or a ledger :class:`Record`. Never raises for bad input.

Whatever a library raises while reading an input becomes a ledger row, ``BaseException`` subclasses included
(pylibjpeg-rle reports a corrupt segment with a Rust panic, ``pyo3_runtime.PanicException``); only
``KeyboardInterrupt`` and ``SystemExit`` pass. Native crashes, hangs and memory blow-ups are caught one
level up, by the decode worker that runs this (see :mod:`cxrjepa.ingest.pool`).
"""

from __future__ import annotations

from cxrjepa.ingest import discover, ledger
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.ledger import Record, Reject, skip
from cxrjepa.ingest.table import Sample


def check_format(fmt: str, item: InputItem, ctx: Context) -> None:
    """Raises :class:`Reject` for an input (format ``fmt``, from :func:`discover.sniff`) that is empty, text or
    unknown, or that is not DICOM while a modality filter is set."""
    if fmt == discover.EMPTY:
        raise Reject(ledger.EMPTY_FILE)
    if fmt == discover.TEXT:
        if discover.promises_image(item.rel):
            raise Reject(ledger.UNRECOGNIZED, "text")
        raise Reject(ledger.TEXT_FILE, status=ledger.IGNORED)
    if fmt == discover.UNKNOWN:
        raise Reject(ledger.UNRECOGNIZED)
    if fmt != discover.DICOM and ctx.config.modality:
        raise skip(ledger.MODALITY, "none")


def _read(item: InputItem, ctx: Context, fmt: str) -> Sample:
    if fmt == discover.DICOM:
        from cxrjepa.ingest.dicom import process_dicom

        return process_dicom(item.fspath, item, ctx)
    if fmt == discover.IMAGE:
        from cxrjepa.ingest.raster import process_image

        return process_image(item.fspath, item, ctx)
    if fmt == discover.VIDEO:
        from cxrjepa.ingest.video import process_video

        return process_video(item.fspath, item, ctx)
    from cxrjepa.ingest.volume import process_volume

    return process_volume(item.fspath, item, ctx)


def process_input(item: InputItem, ctx: Context) -> Sample | Record:
    if item.verdict:  # settled by discovery (sidecar, FIFO, unreadable folder, ...): never opened
        status, reason, detail = item.verdict
        return Record(item.rel, item.source_index, status, reason, detail)
    fmt = ""
    try:
        fmt = discover.sniff(item.path)
        check_format(fmt, item, ctx)
        sample = _read(item, ctx, fmt)
        if item.masks or item.mask_error:
            from cxrjepa.ingest.masks import attach_masks

            sample = attach_masks(sample, item, ctx)
        return sample
    except Reject as r:
        return Record(item.rel, item.source_index, r.status, r.reason, r.detail, format=fmt)
    except MemoryError:  # the worker's memory limit (see pool.py)
        return Record(item.rel, item.source_index, ledger.REJECTED, ledger.MEMORY_LIMIT, format=fmt)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a bug or a library failure: ledgered by class name (messages may hold values)
        return Record(item.rel, item.source_index, ledger.REJECTED, ledger.INTERNAL, type(exc).__name__, format=fmt)
