"""``cxrjepa embed --part K/N`` and ``cxrjepa embed --finalize``: one embedding as the parts of an array job
(docs/cluster.md; the shared machinery is :mod:`cxrjepa.core.parts`).

    from cxrjepa.embed.parts import finalize_embed, run_embed_part
    for k in range(4):                      # or 4 array tasks on 4 GPU nodes, at the same time
        run_embed_part("EMB", f"{k}/4", encoder="RUN", data="DATASET", auto_finalize=False)
    art = finalize_embed("EMB")

The rows (the dataset's samples, in order) are cut into units exactly as a single-process run cuts them
(the same rows per unit whatever the number of parts, so a unit done by any part counts for every split).
The first part to arrive creates the artifact and its arrays; part K embeds the K-th contiguous slice of the
units (:func:`cxrjepa.runtime.shard`) on whatever its node has (``--gpus``, ``--processes``, or the ranks of
an outside torchrun), writing each finished unit's chunks straight into the shared arrays (one unit = one
chunk or shard file, so parts never write the same file) and then a ledger line in its own file
(``ledger/part-K-of-N.rank-RRR.jsonl``). A killed part resumes with its units not in the ledger.

Finalize checks that every unit is in the ledger and writes the index, the exports and the manifest, as the
single run's last step does (:func:`cxrjepa.embed.api.finish`): no copy of the features. The features, the
index and the fingerprint equal a single run's (the content fingerprint too, unit for unit, against a run on
one process). By default the last part to finish finalizes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cxrjepa.core import console
from cxrjepa.core.artifact import Artifact, begin, read_manifest
from cxrjepa.core.config import from_dict, to_dict
from cxrjepa.core.errors import CxrjepaError, expecting_writes
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
    parts_root,
    read_record,
    write_record,
)
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.embed import store
from cxrjepa.embed.api import (
    ALGORITHM_VERSION,
    EmbedConfig,
    EmbedOptions,
    Job,
    Layout,
    array_bytes,
    embed_input_refs,
    finish,
    layout_for,
    resolve_device,
    run_job,
    run_ranks,
)
from cxrjepa.embed.reader import unit_ranges
from cxrjepa.runtime import DistInfo, in_worker, shard, worker_info

__all__ = ["run_embed_part", "finalize_embed", "part_units"]

COMMAND = "cxrjepa embed"


def part_units(n_units: int, part: Part) -> list[int]:
    """The units of rows part ``part`` embeds: its contiguous slice of ``range(n_units)``."""
    return shard(list(range(n_units)), part.index, part.count)


def run_embed_part(
    out: str | Path,
    part: str | Part,
    config: EmbedConfig | None = None,
    *,
    encoder: str | Path,
    data: str | Path,
    weights: str | Path | None = None,
    options: EmbedOptions | None = None,
    force: bool = False,
    auto_finalize: bool = True,
) -> Artifact | dict | None:
    """Embed part ``part`` (``"K/N"`` or a :class:`Part`) of the dataset ``data`` into ``out`` (arguments as
    :func:`cxrjepa.embed.api.run_embed`; every part must get the same settings and inputs).

    Returns the embeddings when they are complete (already, or finalized here because this part was the last
    one), else a summary of this part (a dict); None on ranks other than 0 of an outside torchrun.
    """
    part = parse_part(part)
    config = config or EmbedConfig()
    config.validate()
    options = options or EmbedOptions()
    out = Path(out)
    if in_worker() and worker_info(False).world > 1:  # the ranks of an outside torchrun run this part together
        return _part_as_ranks(out, part, config, encoder, data, weights, options, force, auto_finalize)
    dev, procs = resolve_device(options)
    joined, job, lay = _join(out, part, config, encoder, data, weights, options, dev, procs.world, procs.nproc, force)
    if joined is None:
        return job  # up to date
    try:
        with expecting_writes("the embeddings", array_bytes((read_manifest(out) or {}).get("contents") or {})):
            run_job(job, procs, lay.encoder)
        summary = _complete(out, joined, job)
    finally:
        joined.release()
    return _after(out, part, joined, summary, auto_finalize)


def _after(out: Path, part: Part, joined: Joined, summary: dict, auto_finalize: bool) -> Artifact | dict:
    if auto_finalize:
        art = maybe_finalize(out, part, joined.settings.fingerprint, lambda: finalize_embed(out), COMMAND)
        if art is not None:
            return art
    return summary


def _join(
    out: Path,
    part: Part,
    config: EmbedConfig,
    encoder,
    data,
    weights,
    options: EmbedOptions,
    device: str,
    world: int,
    local: int,
    force: bool,
) -> tuple[Joined | None, Job | Artifact, Layout | None]:
    """Join (or create) the artifact as ``part``; returns the part's place, its job (the pending units of
    its slice) and the layout, or ``(None, artifact, None)`` when the embeddings are complete."""
    ds = DatasetArtifact.open(data)
    refs = embed_input_refs(encoder, data, weights)
    # rows per unit as one process cuts them: the same for every part and every split
    lay = layout_for(ds, config, options, encoder=encoder, weights=weights, device=device, world=1, local=local)
    opts = {**to_dict(options), "device": device, "world_size": world}

    def ready(manifest: dict) -> bool:
        rows = (manifest.get("contents") or {}).get("unit_rows")
        return bool(rows) and store.existing_unit_rows(out, lay.n, lay.shapes, lay.dtypes) == rows

    def create(builder) -> None:
        store.Ledger(out).clear()
        store.create_arrays(out, lay.n, lay.shapes, lay.dtypes, lay.unit_rows)
        builder.contents.update(lay.contents(data, config))
        builder.write_partial()

    joined = join(
        out,
        part,
        kind="embeddings",
        stage="embed",
        params=config,
        inputs=refs,
        version=ALGORITHM_VERSION,
        options=opts,
        force=force,
        ready=ready,
        create=create,
    )
    if joined.existing is not None:
        console.info(f"Embeddings '{out}' are up to date.")
        return None, joined.existing, None
    try:
        unit_rows = int(read_manifest(out)["contents"]["unit_rows"])
        prefix = f"part-{part.name}."
        old = read_record(joined.folder)
        if force or (old is not None and old.get("fingerprint") != joined.settings.fingerprint):
            store.Ledger(out).clear(prefix)  # redo this part's units
            shutil.rmtree(joined.folder, ignore_errors=True)
        joined.folder.mkdir(parents=True, exist_ok=True)
        n_units = len(unit_ranges(lay.n, unit_rows))
        mine = part_units(n_units, part)
        done = {} if force else store.Ledger(out).done()
        pending = [u for u in mine if u not in done]
        job = lay.job(out, data, config, options, device, unit_rows, pending, prefix)
        write_record(joined.folder, new_record(part, joined.settings, {"job": job.to_args(), "units": mine}))
        rows = sum(min(lay.n, (u + 1) * unit_rows) - u * unit_rows for u in mine)
        done_here = f", {len(mine) - len(pending)} of them already written" if len(pending) < len(mine) else ""
        lay.announce(
            config,
            device,
            world,
            f"Part {part}: embedding {rows} of {lay.n} samples ({len(mine)} of {n_units} units{done_here})",
        )
    except BaseException:
        joined.release()
        raise
    return joined, job, lay


def _complete(out: Path, joined: Joined, job: Job) -> dict:
    """Mark the part complete once every unit of its slice is in the ledger."""
    record = read_record(joined.folder) or {}
    mine = [int(u) for u in (record.get("settings") or {}).get("units", [])]
    done = store.Ledger(out).done()
    left = [u for u in mine if u not in done]
    if left:
        raise CxrjepaError(
            f"{len(left)} units of rows of part {joined.part} were not written; rerun the same command to resume."
        )
    record = finish_record(joined.folder, record)
    return {
        "path": str(out),
        "kind": "embeddings",
        "status": "partial",
        "part": str(joined.part),
        "part_status": record["status"],
        "units": len(mine),
        "fingerprint": record["fingerprint"],
    }


def _part_as_ranks(
    out: Path,
    part: Part,
    config: EmbedConfig,
    encoder,
    data,
    weights,
    options: EmbedOptions,
    force: bool,
    auto_finalize: bool,
) -> Artifact | dict | None:
    """A part run by the ranks of an outside torchrun (one node or several): rank 0 joins and records the
    part, every rank embeds its slice of the part's units, rank 0 completes the part (and finalizes)."""
    held: dict = {}

    def prepare(dev: str, info: DistInfo):
        joined, job, _ = _join(
            out, part, config, encoder, data, weights, options, dev, info.world, info.local_world, force
        )
        if joined is None:
            held["existing"] = job
            return None, None
        held["joined"] = joined
        return joined, job

    def complete(joined: Joined | None, job: Job | None):
        if joined is None:
            return held.get("existing")
        try:
            summary = _complete(out, joined, job)
        finally:
            joined.release()
        return _after(out, part, joined, summary, auto_finalize)

    try:
        return run_ranks(options, prepare, complete)
    finally:
        if "joined" in held:
            held["joined"].release()


def finalize_embed(out: str | Path) -> Artifact:
    """Complete the embeddings ``out`` from their parts (see the module docstring).

    Refuses, naming the parts to rerun, while a unit of rows is not written (:class:`PartsIncompleteError`,
    exit 1) or a part is running (exit 2). Embeddings already complete are returned as they are."""
    out = Path(out)
    with artifact_lock(out, "embed --finalize"):
        manifest, found = finalize_start(
            out,
            "embeddings",
            "embeddings",
            f"Embeddings '{out}' are up to date.",
            f"'{out}' holds no embed parts to finalize; run '{COMMAND} ... --out {out} --part K/N' for K = 0 .. N-1 "
            "first (an interrupted single run resumes by rerunning its own command).",
        )
        if isinstance(manifest, Artifact):
            return manifest
        fp = manifest["fingerprint"]
        contents = manifest.get("contents") or {}
        n_rows = int(contents["arrays"]["features"]["shape"][0])
        n_units = len(unit_ranges(n_rows, int(contents["unit_rows"])))
        done = store.Ledger(out).done()
        missing = [u for u in range(n_units) if u not in done]
        reference = next((r for r in found.values() if r and r.get("fingerprint") == fp), None)
        if missing or reference is None:
            count = latest_count(found) or 1
            state = incomplete(found, count, fp)
            if reference is not None:  # name the parts whose units are missing (units are the same in any split)
                gaps = set(missing)
                state = {
                    p: state.get(p, "has units that were never written")
                    for k in range(count)
                    if gaps & set(part_units(n_units, p := Part(k, count)))
                }
            if not state:
                state = {Part(k, count): "missing" for k in range(count)}
            raise PartsIncompleteError(missing_sentence(out, state, COMMAND, reference, found))
        config = from_dict(EmbedConfig, manifest["params"])
        job = Job.from_args(reference["settings"]["job"], config)
        ds = DatasetArtifact.open(job.data)
        if ds.artifact.content_fingerprint != (contents.get("dataset") or {}).get("fingerprint"):
            raise PartsIncompleteError(
                f"The dataset '{job.data}' changed after the parts of '{out}' ran; rerun them with --force."
            )
        count = reference["parts"]
        builder = begin(
            out,
            "embeddings",
            config,
            manifest["inputs"],
            options={**(manifest.get("options") or {}), "parts": count},
            version=ALGORITHM_VERSION,
        )
        if builder.fingerprint != fp:
            raise CxrjepaError(
                f"The parts of '{out}' were made by another version of cxrjepa; rerun them with --force."
            )
        builder.contents = dict(contents)
        console.info(f"Finalizing '{out}' from its parts ({n_units} units of rows).")
        art = finish(builder, job)
        shutil.rmtree(parts_root(out), ignore_errors=True)
        return art
