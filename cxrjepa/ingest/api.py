"""``cxrjepa ingest`` as a Python function: raw archives -> a ``dataset`` artifact (docs/ingest.md)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cxrjepa.core import console
from cxrjepa.core.artifact import Artifact, begin, input_refs, raw_input_ref
from cxrjepa.core.errors import UsageError, expecting_writes
from cxrjepa.core.lock import locks_output
from cxrjepa.data import layout
from cxrjepa.ingest import ledger
from cxrjepa.ingest.config import IngestConfig, IngestOptions
from cxrjepa.ingest.context import Context, InputItem
from cxrjepa.ingest.discover import discover
from cxrjepa.ingest.masks import MaskSource, Pairing, pair_masks, pair_masks_from_csv, parse_sources
from cxrjepa.ingest.phi import Salt, load_salt
from cxrjepa.ingest.pool import (
    Limits,
    default_workers,
    executor,
    memory_limit_mb,
    process_units,
    run_tasks,
    warm_up,
)
from cxrjepa.ingest.staging import Staging, make_units, unit_size_for

#: bump when a change to this stage's code changes what it writes for the same settings and inputs
#: (docs/artifacts.md, "Algorithm versions")
ALGORITHM_VERSION = 1
PARALLEL_WRITE_BYTES = 256 * 2**20


def source_refs(
    sources: Sequence[str | Path], labels: str | Path | None, salt: Salt, masks: Sequence[MaskSource] = ()
) -> list[dict]:
    """The input references of an ingest (sources, labels, mask folders, the salt's tag): its fingerprint's inputs."""
    refs = []
    for i, src in enumerate(sources):
        s = str(src)
        refs.append(raw_input_ref(f"source[{i}]", s[1:]) if s.startswith("@") else input_refs({f"source[{i}]": s})[0])
    if labels is not None:
        refs.extend(input_refs({"labels": str(labels)}))
    for i, m in enumerate(masks):  # a class name changes the stored labels: it is part of the reference
        refs.append(raw_input_ref(f"masks[{i}]" + (f"={m.name}" if m.name else ""), m.path))
    refs.append({"name": "salt", "path": "", "kind": "salt", "fingerprint": salt.tag})
    return refs


def ingest_input_refs(
    sources: Sequence[str | Path],
    labels: str | Path | None = None,
    masks: Sequence[str | Path] | str | Path | None = None,
    options: IngestOptions | None = None,
) -> list[dict]:
    """The inputs of an ingest as its fingerprint sees them (the pipeline runner uses this too)."""
    salt = load_salt((options or IngestOptions()).salt_file, create=False)
    return source_refs(sources, labels, salt, parse_sources(masks))


@locks_output("ingest")
def run_ingest(
    out: str | Path,
    config: IngestConfig | None = None,
    *,
    sources: Sequence[str | Path],
    labels: str | Path | None = None,
    masks: Sequence[str | Path] | str | Path | None = None,
    options: IngestOptions | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> Artifact | dict:
    """Ingest ``sources`` (folders, files, ``@list`` files) into the dataset artifact ``out``.

    ``masks``: folders of mask files (``DIR`` or ``NAME=DIR``, see :mod:`cxrjepa.ingest.masks`) stored as
    ``data.zarr/masks`` with each image's geometry; ``config.labels_mask_column`` takes them from the
    labels CSV instead.

    Returns the complete :class:`Artifact`, or with ``dry_run`` a dict describing what would happen
    (nothing is written). Resumes an interrupted run with the same settings and inputs; returns the
    existing artifact when it is up to date.
    """
    config, options, mask_sources = check_request(config, options, sources, labels, masks)
    out = Path(out)
    salt = load_salt(options.salt_file, create=not dry_run)
    workers = options.workers if options.workers > 0 else default_workers()
    refs = source_refs(sources, labels, salt, mask_sources)
    builder = begin(
        out,
        "dataset",
        config,
        refs,
        options={"workers": workers},
        force=force,
        dry_run=dry_run,
        version=ALGORITHM_VERSION,
    )
    ctx = Context(config, salt)
    if dry_run:
        from cxrjepa.ingest.dryrun import dry_run_report

        return dry_run_report(out, sources, ctx, workers, builder.action, mask_sources)
    staging = Staging(out)
    if builder.skipped:
        staging.remove()
        console.info(f"Dataset '{out}' is up to date.")
        return builder.existing_artifact()
    return _ingest(out, builder, sources, labels, ctx, options, workers, staging, mask_sources)


def check_request(
    config: IngestConfig | None,
    options: IngestOptions | None,
    sources: Sequence[str | Path],
    labels: str | Path | None,
    masks: Sequence[str | Path] | str | Path | None,
) -> tuple[IngestConfig, IngestOptions, list[MaskSource]]:
    """The checked settings of an ingest (one sentence, exit 2, for what cannot work) and its mask sources."""
    config = config or IngestConfig()
    config.validate()
    options = options or IngestOptions()
    if not options.time_limit > 0:
        raise UsageError(f"The time limit per input must be positive, not {options.time_limit}.")
    if options.memory_limit_mb < 0 or 0 < options.memory_limit_mb < 256:
        raise UsageError(
            f"The memory limit per worker must be at least 256 MB (or 0: automatic), not {options.memory_limit_mb}."
        )
    if not sources:
        raise UsageError("Give at least one input folder or file to ingest.")
    if labels is not None and not Path(labels).is_file():
        raise UsageError(f"The labels file '{labels}' does not exist.")
    for s in sources:
        p = Path(str(s)[1:] if str(s).startswith("@") else s)
        if not p.exists():
            raise UsageError(f"The input '{p}' does not exist.")
    mask_sources = parse_sources(masks)
    if config.labels_mask_column and labels is None:
        raise UsageError("'labels_mask_column' needs a labels CSV (--labels).")
    if config.labels_mask_column and mask_sources:
        raise UsageError("Give masks either with --masks or with a masks column of the labels CSV, not both.")
    return config, options, mask_sources


def find_inputs(
    out: Path,
    sources: Sequence[str | Path],
    labels: str | Path | None,
    config: IngestConfig,
    mask_sources: Sequence[MaskSource],
) -> tuple[list, Pairing | None]:
    """Every entry of the sources in the sorted order samples take (discovery, then mask pairing), and the
    pairing. Refuses sources that hold no input file at all."""
    items = discover(sources, exclude=[out, *(m.path for m in mask_sources)])
    if all(i.verdict and i.verdict[0] == ledger.IGNORED for i in items):
        found = f" (only {len(items)} sidecar or hidden files)" if items else ""
        raise UsageError("No input files found in " + ", ".join(f"'{s}'" for s in sources) + found + ".")
    pairing = _pair(items, labels, config, list(mask_sources))
    if pairing is not None:
        items = pairing.items
    return items, pairing


def _pair(items, labels, config: IngestConfig, mask_sources: list[MaskSource]) -> Pairing | None:
    if mask_sources:
        pairing = pair_masks(items, mask_sources)
    elif config.labels_mask_column:
        pairing = pair_masks_from_csv(items, labels, config.labels_mask_column, config.labels_key, config.labels_column)
    else:
        return None
    st = pairing.stats
    console.info(
        f"Masks: {st['inputs_with_masks']} of {len(items)} inputs have a mask ({st['mask_files']} mask files)."
    )
    if st.get("mask_files_unmatched"):
        console.warn(f"{st['mask_files_unmatched']} mask files match no input (named after no input file).")
    if st["inputs_with_masks"] == 0:
        console.warn(
            "No mask matched an input: masks are matched by file name without extension "
            "(IMG1.png or IMG1_mask.png for IMG1.dcm) or by a path that mirrors the inputs."
        )
    return pairing


def _ingest(
    out,
    builder,
    sources,
    labels,
    ctx: Context,
    options: IngestOptions,
    workers: int,
    staging: Staging,
    mask_sources: list[MaskSource] = (),
) -> Artifact:
    config = ctx.config
    warm_up()  # the decode workers' fork server imports the decoders while the inputs are discovered
    items, pairing = find_inputs(out, sources, labels, config, mask_sources)
    units = process_inputs(out, staging, items, ctx, options, workers, resumed=builder.resumed)
    artifact = assemble(out, builder, labels, ctx, workers, [(staging, len(units))], len(items), pairing)
    staging.remove()
    return artifact


def process_inputs(
    store: Path,
    staging: Staging,
    items: Sequence[InputItem],
    ctx: Context,
    options: IngestOptions,
    workers: int,
    *,
    resumed: bool,
    orders: Sequence[int] | None = None,
    heading: str = "Ingesting",
) -> list:
    """Decode ``items`` into the staging area of ``store`` (the artifact, or a part's folder) in work units,
    skipping the units already done; returns every unit. ``orders``: the items' positions in the whole
    input list when they are a part of it."""
    unit_size = options.unit_size if options.unit_size > 0 else unit_size_for(len(items), workers)
    unit_size = staging.prepare(items, unit_size, ctx.config.size, ctx.config.dtype, orders)
    units = make_units(items, unit_size, orders)
    todo = [u for u in units if not staging.is_done(u.index)]
    if resumed and len(todo) < len(units):
        console.info(f"Resuming: {len(units) - len(todo)} of {len(units)} work units were already done.")
    n_ignored = sum(1 for i in items if i.verdict and i.verdict[0] == ledger.IGNORED)
    also = f" ({n_ignored} more files ignored: sidecar, text or hidden)" if n_ignored else ""
    console.info(
        f"{heading} {len(items) - n_ignored} inputs{also} with {workers} worker{'s' if workers > 1 else ''} -> {store}"
    )
    with console.progress("ingest", total=len(items)) as bar:
        bar.advance(sum(len(u.items) for u in units) - sum(len(u.items) for u in todo))
        limits = Limits(seconds=options.time_limit, memory_mb=memory_limit_mb(workers, options.memory_limit_mb))
        process_units(store, todo, ctx, workers, lambda r: bar.advance(r["inputs"]), limits)
    return units


def assemble(
    out: Path,
    builder,
    labels,
    ctx: Context,
    workers: int,
    stores: Sequence[tuple[Staging, int]],
    n_items: int,
    pairing: Pairing | None = None,
) -> Artifact:
    """The last step of an ingest: the dataset from the finished work units of ``stores`` (staging areas and
    their unit counts: the run's own, or one per part of an array job), ``n_items`` entries in all.

    Writes the images, tables and the complete manifest; the caller removes the staging areas."""
    from cxrjepa.ingest import writer

    config = ctx.config
    asm = writer.collect(stores, config.dedupe)
    meta = asm.meta
    label_columns: list[str] = []
    if labels is not None:
        from cxrjepa.ingest.labels import join_labels

        res = join_labels(
            meta,
            labels,
            key=config.labels_key,
            column=config.labels_column,
            patient_column=config.labels_patient_column,
            salt=ctx.salt,
            not_samples={r["path"] for r in asm.records},
            skip_columns=[config.labels_mask_column] if config.labels_mask_column else (),
        )
        meta, label_columns = res.meta, res.label_columns
        builder.counts.update(res.stats)
        builder.notes.extend(res.notes)
        st = res.stats
        if st["labels_unmatched_rows"]:
            why = (
                f" ({st['labels_rows_of_ledgered_inputs']} of them belong to rejected, skipped or duplicate inputs)"
                if st["labels_rows_of_ledgered_inputs"]
                else ""
            )
            console.warn(f"{st['labels_unmatched_rows']} of {st['labels_rows']} label rows matched no sample{why}.")
        if res.stats["samples_without_labels"]:
            console.warn(f"{res.stats['samples_without_labels']} samples have no label row.")
    n_bytes = (
        int(meta["frame_count"].sum()) * config.size**2 * (1 if config.dtype == "uint8" else 2) if len(meta) else 0
    )
    # a pool pays off only when there is much to compress and write (starting one costs ~0.5 s)
    pool = executor(workers) if workers > 1 and n_bytes > PARALLEL_WRITE_BYTES else None
    try:
        with console.progress("write", total=int(meta["frame_count"].sum()) if len(meta) else 0) as bar:

            def run(fn, tasks, w, on_done):
                run_tasks(fn, tasks, w if pool else 1, on_done, pool)

            with expecting_writes("the dataset's images", n_bytes):  # a full disk says how much is needed
                n_frames = writer.copy_all(
                    out,
                    meta,
                    config.size,
                    config.dtype,
                    workers,
                    run,
                    bar.advance,
                    masks=pairing is not None,
                    stores=[st for st, _ in stores],
                )
    finally:
        if pool is not None:
            pool.shutdown()
    public = writer.write_tables(out, meta, asm.records)
    records = asm.records
    status = Counter(r["status"] for r in records)
    maxv = float((1 << 8) - 1 if config.dtype == "uint8" else (1 << 16) - 1)
    builder.counts.update(
        {
            "inputs": int(n_items - asm.ignored),
            "samples": int(len(public)),
            "frames": int(n_frames),
            "rejected": int(status.get(ledger.REJECTED, 0)),
            "skipped": int(status.get(ledger.SKIPPED, 0)),
            "duplicates": int(status.get(ledger.DUPLICATE, 0)),
            "ignored": int(asm.ignored),
            "burned_in_annotation": int(public["burned_in_annotation"].sum()) if len(public) else 0,
            "for_processing": int(public["for_processing"].sum()) if len(public) else 0,
            "by_format": _counter(public["format"]),
            "by_modality": _counter(public["modality"].replace("", "none")),
            "by_transfer_syntax": _ts_counts(public["transfer_syntax"]),
            "by_reason": _by_reason(r for r in records if r["status"] != ledger.IGNORED),
            "ignored_by_reason": _by_reason(r for r in records if r["status"] == ledger.IGNORED),
        }
    )
    builder.contents.update(
        {
            "images": {
                "path": f"{layout.ZARR}/{layout.IMAGES}",
                "shape": [int(n_frames), config.size, config.size],
                "dtype": config.dtype,
                "chunks": [1, config.size, config.size],
                "shards": [min(layout.SHARD_FRAMES, max(1, int(n_frames))), config.size, config.size],
                "dimension_names": list(layout.DIMENSION_NAMES),
            },
            "metadata": layout.METADATA,
            "failures": layout.FAILURES,
            "columns": [c for c in public.columns],
            "label_columns": label_columns,
            "normalization": writer.normalization(meta, maxv),
            "size": config.size,
            "masks": _masks_contents(meta, pairing, config, int(n_frames)) if pairing is not None else False,
            "salt": {"source": ctx.salt.source},
        }
    )
    if pairing is not None:
        builder.counts.update(
            {
                "masks": int(public["has_mask"].sum()) if len(public) else 0,
                "mask_files": int(pairing.stats.get("mask_files", 0)),
                "mask_files_unmatched": int(pairing.stats.get("mask_files_unmatched", 0)),
            }
        )
    if ctx.salt.source == "generated":
        builder.notes.append(
            f"Sample and patient keys use a generated salt kept outside the artifact at {ctx.salt.location}; "
            "keep it private, and pass it with --salt-file to get the same keys in other datasets."
        )
    artifact = builder.finish(
        writer.content_fingerprint(
            public, config.size, config.dtype, meta["_mask_hash"] if pairing is not None else None
        )
    )
    _report(artifact)
    return artifact


def _masks_contents(meta, pairing: Pairing, config: IngestConfig, n_frames: int) -> dict:
    from cxrjepa.ingest.masks import IGNORE, class_names

    has = meta["has_mask"].astype(bool) if len(meta) else meta["has_mask"]
    values = sorted({int(v) for text in meta.loc[has, "_mask_values"].fillna("") for v in str(text).split(",") if v})
    return {
        "path": f"{layout.ZARR}/{layout.MASKS}",
        "shape": [n_frames, config.size, config.size],
        "dtype": "uint8",
        "chunks": [1, config.size, config.size],
        "shards": [min(layout.SHARD_FRAMES, max(1, n_frames)), config.size, config.size],
        "dimension_names": list(layout.DIMENSION_NAMES),
        "classes": class_names(
            pairing.classes, config.mask_classes, meta.loc[has, "_mask_names"].fillna("").tolist(), values
        ),
        "values": values,
        "ignore_value": IGNORE,
        "samples": int(has.sum()),
        "source": "labels" if config.labels_mask_column else "folders",
    }


def _by_reason(records) -> dict[str, int]:
    return dict(sorted(Counter(r["reason"] for r in records).items(), key=lambda kv: -kv[1]))


def _counter(series) -> dict[str, int]:
    return {str(k): int(v) for k, v in Counter(series.astype(str)).most_common()}


def _ts_counts(series) -> dict[str, int]:
    from pydicom.uid import UID

    c = Counter(UID(s).name for s in series.astype(str) if s and s != "private")
    n_private = int((series.astype(str) == "private").sum())
    if n_private:
        c["private"] = n_private
    return dict(c.most_common())


def _report(artifact: Artifact) -> None:
    c = artifact.counts
    console.info(
        f"{c['samples']} samples ({c['frames']} frames) from {c['inputs']} inputs: "
        f"{c['rejected']} rejected, {c['skipped']} skipped, {c['duplicates']} duplicates, {c['ignored']} ignored."
    )
    for reason, n in list(c.get("by_reason", {}).items())[:8]:
        console.info(f"  {n:>7}  {reason}")
    if c.get("burned_in_annotation"):
        console.warn(
            f"{c['burned_in_annotation']} samples are flagged BurnedInAnnotation=YES (column burned_in_annotation)."
        )
