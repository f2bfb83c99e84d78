"""``cxrjepa ingest --dry-run``: what would be ingested, skipped or rejected, read from headers only.

Every input is recognised by content; DICOM headers are read (no pixels) to apply the policy (DICOMDIR,
non-image objects, modality filter, FOR PROCESSING) and to check that this install has a decoder for the
transfer syntax. Nothing is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cxrjepa.core import console
from cxrjepa.ingest import discover as disc
from cxrjepa.ingest import ledger
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.ledger import Reject
from cxrjepa.ingest.pool import executor, run_tasks
from cxrjepa.ingest.process import check_format
from cxrjepa.ingest.staging import make_units, unit_size_for


def probe(item: InputItem, ctx: Context) -> dict:
    """Header-only verdict on one input: {format, status ('ok' or a ledger status), reason, detail, ts}."""
    out = {"format": "", "status": "ok", "reason": "", "detail": "", "ts": ""}
    if item.verdict:  # settled by discovery: never opened
        out.update(zip(("status", "reason", "detail"), item.verdict))
        return out
    try:
        fmt = out["format"] = disc.sniff(item.path)
        check_format(fmt, item, ctx)
        if fmt == disc.DICOM:
            from cxrjepa.ingest.dicom import check_header, quiet_pydicom, read_header, ts_name

            with quiet_pydicom():
                path = Path(item.path)
                ds = read_header(path, stop_before_pixels=False)
                out["ts"] = ts_name(ds.file_meta.TransferSyntaxUID)
                check_header(ds, path, ctx)
    except Reject as r:
        out.update(status=r.status, reason=r.reason, detail=r.detail)
    except Exception as exc:
        out.update(status=ledger.REJECTED, reason=ledger.INTERNAL, detail=type(exc).__name__)
    return out


def probe_many(items: Sequence[InputItem], ctx: Context) -> list[dict]:
    return [probe(i, ctx) for i in items]


def dry_run_report(out: Path, sources: Sequence, ctx: Context, workers: int, action: str, masks: Sequence = ()) -> dict:
    items = disc.discover(sources, exclude=[out, *(m.path for m in masks)])
    pairing = None
    if masks:
        from cxrjepa.ingest.masks import pair_masks

        pairing = pair_masks(items, masks)
    units = make_units(items, unit_size_for(len(items), workers))
    results: list[list[dict]] = [[] for _ in units]
    pool = executor(workers) if workers > 1 and len(items) > 64 else None
    try:
        run_tasks(probe_many, [(u.items, ctx) for u in units], workers, lambda i, r: results.__setitem__(i, r), pool)
    finally:
        if pool is not None:
            pool.shutdown()
    flat = [r for rs in results for r in rs]
    ok = [r for r in flat if r["status"] == "ok"]
    by_status = Counter(r["status"] for r in flat if r["status"] != "ok")
    report = {
        "out": str(out),
        "action": {"create": "create", "overwrite": "replace", "resume": "resume", "skip": "nothing (up to date)"}.get(
            action, action
        ),
        "inputs": len(items) - by_status.get(ledger.IGNORED, 0),
        "ignored": by_status.get(ledger.IGNORED, 0),
        "would_ingest": len(ok),
        "would_ingest_by_format": dict(Counter(r["format"] for r in ok).most_common()),
        "would_skip": by_status.get(ledger.SKIPPED, 0),
        "would_reject": by_status.get(ledger.REJECTED, 0),
        "by_reason": dict(
            Counter(r["reason"] for r in flat if r["reason"] and r["status"] != ledger.IGNORED).most_common()
        ),
        "transfer_syntaxes": dict(Counter(r["ts"] for r in flat if r["ts"]).most_common()),
        "cannot_decode": dict(Counter(r["detail"] for r in flat if r["reason"] == ledger.NO_DECODER).most_common()),
        "note": "header check only: pixel decoding, constant images and duplicates are found by the real run",
    }
    if pairing is not None:
        report["masks"] = {**pairing.stats, "ambiguous": sum(1 for i in pairing.items if i.mask_error)}
    console.info(f"Dry run: would {report['action']} '{out}'.")
    console.info(
        f"{report['inputs']} inputs: {report['would_ingest']} would be ingested, {report['would_skip']} skipped, "
        f"{report['would_reject']} rejected; {report['ignored']} ignored (sidecar, text and hidden files)."
    )
    for reason, n in report["by_reason"].items():
        console.info(f"  {n:>7}  {reason}")
    if pairing is not None:
        m = report["masks"]
        console.info(
            f"Masks: {m['inputs_with_masks']} inputs have a mask; {m['mask_files_unmatched']} mask files match no input; "
            f"{m['ambiguous']} inputs would be rejected for an ambiguous mask name (mask size and content are checked by the real run)."
        )
    if report["cannot_decode"]:
        console.warn(
            "This install cannot decode: " + ", ".join(f"{k} ({v})" for k, v in report["cannot_decode"].items())
        )
    return report
