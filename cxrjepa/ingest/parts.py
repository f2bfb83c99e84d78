"""``cxrjepa ingest --part K/N`` and ``cxrjepa ingest --finalize``: one ingest as the parts of an array job
(docs/cluster.md; the shared machinery is :mod:`cxrjepa.core.parts`).

    from cxrjepa.ingest.parts import finalize_ingest, run_ingest_part
    for k in range(4):                      # or 4 array tasks on 4 machines, at the same time
        run_ingest_part("DATASET", f"{k}/4", sources=["/archive"], auto_finalize=False)
    art = finalize_ingest("DATASET")

A part discovers every input (a walk that reads no pixels) in the single run's sorted order, keeps those whose
path relative to their source root hashes to it (:func:`cxrjepa.core.parts.part_of`), and decodes them exactly
as a single run does, into its own staging area ``OUT/parts/K-of-N/staging/`` (work units, resumable after
``kill -9``: cxrjepa.ingest.staging). Every sample keeps its position in the whole input list.

Finalize merges the parts' units back into that order and runs the single run's last step
(:func:`cxrjepa.ingest.api.assemble`): duplicates across parts are dropped as in one run (the first in input
order wins, by SOPInstanceUID or file and then by pixels), the frames are copied once from the parts' staging
areas into the final sharded array (what a single run copies from its own staging area: no second copy of
the dataset, and the same temporary disk use), the labels are joined, and the parts' folders are removed.
The dataset's fingerprint, sample ids and order, pixels, metadata table, ledger and counts are those of one
run over the same inputs with the same settings.

By default the last part to finish finalizes (``auto_finalize``); a part that finishes earlier says which
parts are still to come. A part's exit status does not report rejected inputs (exit 0 when its work is
done, so that ``--dependency=afterok`` works); finalize does (exit 3).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from cxrjepa.core import console
from cxrjepa.core.artifact import Artifact, begin
from cxrjepa.core.config import from_dict
from cxrjepa.core.errors import CxrjepaError, UsageError
from cxrjepa.core.parts import (
    Joined,
    Part,
    PartsIncompleteError,
    artifact_lock,
    finalize_start,
    finish_record,
    incomplete,
    join,
    latest_count,
    maybe_finalize,
    missing_sentence,
    new_record,
    parse_part,
    part_dir,
    part_names,
    parts_root,
    read_record,
    write_record,
)
from cxrjepa.ingest import ledger
from cxrjepa.ingest.api import ALGORITHM_VERSION, assemble, check_request, find_inputs, process_inputs, source_refs
from cxrjepa.ingest.config import IngestConfig, IngestOptions
from cxrjepa.ingest.context import Context
from cxrjepa.ingest.masks import Pairing
from cxrjepa.ingest.phi import Salt, load_salt
from cxrjepa.ingest.pool import default_workers, warm_up
from cxrjepa.ingest.staging import Staging, inputs_fingerprint

__all__ = ["run_ingest_part", "finalize_ingest"]

COMMAND = "cxrjepa ingest"


def run_ingest_part(
    out: str | Path,
    part: str | Part,
    config: IngestConfig | None = None,
    *,
    sources: Sequence[str | Path],
    labels: str | Path | None = None,
    masks: Sequence[str | Path] | str | Path | None = None,
    options: IngestOptions | None = None,
    force: bool = False,
    auto_finalize: bool = True,
) -> Artifact | dict:
    """Ingest part ``part`` (``"K/N"`` or a :class:`Part`) of ``sources`` into the dataset ``out`` (arguments
    as :func:`cxrjepa.ingest.api.run_ingest`; every part must get the same ones).

    Returns the dataset when it is complete (already up to date, or finalized here because this part was the
    last one), else a summary of this part (a dict). Rerunning a part resumes it; a complete part is not
    redone (``force`` redoes it, and replaces a finished dataset).
    """
    part = parse_part(part)
    config, options, mask_sources = check_request(config, options, sources, labels, masks)
    out = Path(out)
    salt = load_salt(options.salt_file, create=True)
    workers = options.workers if options.workers > 0 else default_workers()
    refs = source_refs(sources, labels, salt, mask_sources)
    joined = join(
        out,
        part,
        kind="dataset",
        stage="ingest",
        params=config,
        inputs=refs,
        version=ALGORITHM_VERSION,
        options={"workers": workers},
        force=force,
    )
    if joined.existing is not None:
        console.info(f"Dataset '{out}' is up to date.")
        return joined.existing
    with joined:
        summary = _run(out, joined, sources, labels, Context(config, salt), options, workers, mask_sources, force)
    if auto_finalize:
        art = maybe_finalize(
            out, part, joined.settings.fingerprint, lambda: finalize_ingest(out, workers=workers), COMMAND
        )
        if art is not None:
            return art
    return summary


def _run(
    out: Path,
    joined: Joined,
    sources,
    labels,
    ctx: Context,
    options: IngestOptions,
    workers: int,
    mask_sources,
    force: bool,
) -> dict:
    part, folder, fp = joined.part, joined.folder, joined.settings.fingerprint
    old = read_record(folder)
    if old is not None and old.get("fingerprint") == fp and old.get("status") == "complete" and not force:
        console.info(f"Part {part} of '{out}' is already complete.")
        return _summary(out, old)
    if force or (old is not None and old.get("fingerprint") != fp):
        shutil.rmtree(folder, ignore_errors=True)  # other settings or inputs (or --force): start this part over
    folder.mkdir(parents=True, exist_ok=True)
    warm_up()  # the decode workers' fork server imports the decoders while the inputs are discovered
    items, pairing = find_inputs(out, sources, labels, ctx.config, mask_sources)
    orders = [i for i, item in enumerate(items) if part.owns(item.rel)]
    mine = [items[i] for i in orders]
    salt = ctx.salt
    record = new_record(
        part,
        joined.settings,
        {
            "sources": [str(s) for s in sources],
            "labels": str(Path(labels).resolve()) if labels is not None else None,
            "salt": {
                "source": salt.source,
                "location": salt.location,
                "tag": salt.tag,
                "file": str(Path(options.salt_file).resolve()) if options.salt_file else None,
            },
            "n_inputs": len(items),
            "inputs_hash": inputs_fingerprint(items),
            "inputs": len(mine),
            "pairing": {"classes": pairing.classes, "stats": pairing.stats} if pairing is not None else None,
        },
    )
    write_record(folder, record)
    staging = Staging(folder)
    units = process_inputs(
        folder,
        staging,
        mine,
        ctx,
        options,
        workers,
        resumed=old is not None,
        orders=orders,
        heading=f"Part {part} of {len(items)} entries: ingesting",
    )
    record = finish_record(folder, record, units=len(units))
    return _summary(out, record)


def _summary(out: Path, record: dict) -> dict:
    s = record.get("settings") or {}
    return {
        "path": str(out),
        "kind": "dataset",
        "status": "partial",
        "part": f"{record['part']}/{record['parts']}",
        "part_status": record.get("status"),
        "part_inputs": s.get("inputs"),
        "inputs": s.get("n_inputs"),
        "fingerprint": record.get("fingerprint"),
    }


def finalize_ingest(out: str | Path, *, workers: int = 0) -> Artifact:
    """Assemble the dataset ``out`` from its complete parts (see the module docstring).

    Refuses, naming the parts to rerun, when a part of the split is missing, unfinished or was made with
    other settings or inputs (:class:`PartsIncompleteError`, exit 1), and while a part is running (exit 2).
    A dataset already complete is returned as it is."""
    out = Path(out)
    workers = workers if workers > 0 else default_workers()
    with artifact_lock(out, f"{COMMAND.split()[1]} --finalize"):
        manifest, found = finalize_start(
            out,
            "dataset",
            "a dataset",
            f"Dataset '{out}' is up to date.",
            f"'{out}' holds no ingest parts to finalize; run '{COMMAND} SRC... --out {out} --part K/N' for K = 0 .. "
            "N-1 first.",
        )
        if isinstance(manifest, Artifact):
            return manifest
        fp = manifest["fingerprint"]
        count = _complete_split(found, fp)
        if count is None:
            count = latest_count(found) or 1
            why = incomplete(found, count, fp)
            reference = next((r for r in found.values() if r and r.get("fingerprint") == fp), None)
            raise PartsIncompleteError(missing_sentence(out, why, COMMAND, reference, found))
        recs = [found[Part(k, count)] or {} for k in range(count)]
        _check_same_inputs(out, recs)
        return _assemble(out, recs, count, workers)


def _complete_split(found: dict, fingerprint: str) -> int | None:
    """The number of parts of a split whose every part is complete with ``fingerprint`` (the newest one when
    several are), None when there is none."""
    counts = sorted({p.count for p in found}, key=lambda c: c != latest_count(found))
    return next((c for c in counts if not incomplete(found, c, fingerprint)), None)


def _check_same_inputs(out: Path, recs: list[dict]) -> None:
    """Every part must have seen the same input list (a folder one host may read and another not would make
    them differ even with equal fingerprints)."""
    ref = recs[0]["settings"]
    odd = [
        Part(k, len(recs))
        for k, r in enumerate(recs)
        if (r["settings"].get("n_inputs"), r["settings"].get("inputs_hash"))
        != (ref.get("n_inputs"), ref.get("inputs_hash"))
    ]
    if odd:
        raise PartsIncompleteError(
            f"Part{'s' if len(odd) > 1 else ''} {part_names(odd)} of '{out}' found another list of inputs than part "
            f"0/{len(recs)} ({ref.get('n_inputs')} entries); check that every machine sees the same files, then rerun "
            f"{'them' if len(odd) > 1 else 'it'} with --force."
        )


def _finalize_salt(rec: dict) -> Salt:
    """The salt the parts used (finalize joins the labels with it), from where they took it."""
    s = rec["settings"]["salt"]
    try:
        salt = load_salt(s.get("file"), create=False)
    except UsageError:
        salt = None
    if salt is None or salt.tag != s["tag"]:
        where = {
            "file": f"the salt file '{s.get('file') or s.get('location')}'",
            "env": "$CXRJEPA_SALT",
            "generated": f"the generated salt at '{s.get('location')}'",
        }.get(s.get("source"), "the same salt")
        raise UsageError(
            f"Finalizing needs the salt the parts used ({where}); run it where that salt is available "
            "(the same environment as the parts)."
        )
    return salt


def _assemble(out: Path, recs: list[dict], count: int, workers: int) -> Artifact:
    ref = recs[0]
    settings = ref["settings"]
    config = from_dict(IngestConfig, ref["params"])
    builder = begin(
        out, "dataset", config, ref["inputs"], options={"workers": workers, "parts": count}, version=ALGORITHM_VERSION
    )
    if builder.fingerprint != ref["fingerprint"]:  # the settings read back do not give the parts' fingerprint
        raise CxrjepaError(f"The parts of '{out}' were made by another version of cxrjepa; rerun them with --force.")
    stores = []
    for k, rec in enumerate(recs):
        staging = Staging(part_dir(out, Part(k, count)))
        n_units = int(rec.get("units", 0))
        lost = [u for u in range(n_units) if not staging.is_done(u)]
        if lost:
            raise PartsIncompleteError(
                f"Part {k}/{count} of '{out}' lost {len(lost)} of its {n_units} work units "
                f"(its folder was changed); rerun it with --force (sbatch --array={k})."
            )
        stores.append((staging, n_units))
    pairing = None
    if settings.get("pairing"):
        pairing = Pairing([], dict(settings["pairing"]["classes"]), dict(settings["pairing"]["stats"]))
    ctx = Context(config, _finalize_salt(ref))
    console.info(f"Finalizing '{out}' from {count} parts ({settings['n_inputs']} entries).")
    artifact = assemble(out, builder, settings.get("labels"), ctx, workers, stores, int(settings["n_inputs"]), pairing)
    shutil.rmtree(parts_root(out), ignore_errors=True)
    if artifact.counts.get("rejected"):
        console.detail(
            f"{artifact.counts['rejected']} inputs were rejected ({ledger.REJECTED} rows of failures.jsonl)."
        )
    return artifact
