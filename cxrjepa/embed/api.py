"""``cxrjepa embed`` as a Python function: features per sample from any encoder, resumable and sharded.

    from cxrjepa.embed.api import EmbedConfig, run_embed
    art = run_embed("EMB", EmbedConfig(last4=True), encoder="RUN", data="DATASET")

The coordinating process opens (or resumes) the artifact, creates the zarr arrays and lists the units of
rows not yet in the ledger; one or several ranks then embed their slices of those units, each writing its
own chunks and ledger lines; the coordinator writes index.parquet, the optional npy/parquet copies and the
complete manifest. Several ranks are launched through :mod:`cxrjepa.runtime` (torchrun, one process per GPU
or ``--processes`` CPU processes): they start from a launch spec holding the resolved config and the job,
and share nothing but the files they write. Under an outside torchrun every rank runs :func:`run_embed`;
rank 0 coordinates and hands the job to the others.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrjepa.core import console
from cxrjepa.core.artifact import Artifact, ArtifactBuilder, begin, input_refs, open_artifact, plan_artifact
from cxrjepa.core.config import dump_yaml, load_config, to_dict
from cxrjepa.core.errors import CxrjepaError, UsageError, expecting_writes
from cxrjepa.core.fingerprint import hash_obj
from cxrjepa.core.lock import locks_output
from cxrjepa.core.schema import check_written
from cxrjepa.data.store import DatasetArtifact
from cxrjepa.embed import store
from cxrjepa.embed.config import EmbedConfig, EmbedOptions
from cxrjepa.embed.extract import PATCH, Extractor, check_config, input_size, output_shapes
from cxrjepa.embed.reader import auto_workers, batch_loader, encoder_clip, plan_batches, plan_for, unit_ranges
from cxrjepa.encoders import (
    EncoderSpec,
    FeatureEncoder,
    encoder_input_ref,
    load_feature_encoder,
    parse_encoder_spec,
)
from cxrjepa.runtime import (
    DistInfo,
    LaunchSpec,
    ProcessPlan,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cpu_count,
    dry_run_command,
    in_worker,
    init_worker,
    launch,
    shard,
    shutdown,
    worker_info,
)

__all__ = ["EmbedConfig", "EmbedOptions", "run_embed", "embed_input_refs", "load_encoder_for"]

#: bump when a change to this stage's code changes what it writes for the same settings and inputs
#: (docs/artifacts.md, "Algorithm versions")
ALGORITHM_VERSION = 1


def embed_input_refs(encoder: str | Path, data: str | Path, weights: str | Path | None = None) -> list[dict]:
    """The inputs of an embed run, as its fingerprint sees them (the pipeline runner uses this too).

    Encoders read from disk (a run, an export, a Hugging Face folder, a timm weights file) are referenced
    like any input; ``random:SIZE`` and the timm model name are part of the reference itself.
    """
    return input_refs({"data": data}) + [encoder_input_ref("encoder", encoder, weights)]


def load_encoder_for(
    spec: EncoderSpec, config: EmbedConfig, data: DatasetArtifact, device: str | torch.device = "cpu"
) -> FeatureEncoder:
    """The encoder as embed uses it (``random:`` encoders take the dataset's size and normalization)."""
    return load_feature_encoder(
        spec,
        device=device,
        seed=config.seed,
        image_size=config.image_size or data.size,
        normalization=data.normalization,
    )


@dataclass
class Job:
    """What every rank needs to embed its share (picklable: sent to spawned processes)."""

    out: Path
    data: Path
    spec: EncoderSpec
    config: EmbedConfig
    device: str
    batch_size: int
    workers: int | None
    n_rows: int
    unit_rows: int
    pending: list[int] = field(default_factory=list)
    dtypes: dict = field(default_factory=dict)
    #: (frames, stride) of a clip encoder (embedded in whole clip windows), None for image encoders
    clip: tuple[int, int] | None = None
    #: prefix of this job's ledger files (a part of an array job writes ``part-K-of-N.rank-RRR.jsonl``)
    ledger: str = ""

    def to_args(self) -> dict:
        """The job as JSON-able launch-spec arguments (the config travels as the spec's config file)."""
        # absolute paths: the ranks on other nodes and a finalize step may start in another working directory
        return {
            "out": str(self.out.absolute()),
            "data": str(self.data.absolute()),
            "encoder": self.spec.absolute(),
            "weights": str(self.spec.weights.absolute()) if self.spec.weights else None,
            "device": self.device,
            "batch_size": self.batch_size,
            "workers": self.workers,
            "n_rows": self.n_rows,
            "unit_rows": self.unit_rows,
            "pending": list(self.pending),
            "dtypes": dict(self.dtypes),
            "clip": list(self.clip) if self.clip else None,
            "ledger": self.ledger,
        }

    @classmethod
    def from_args(cls, args: dict, config: EmbedConfig) -> Job:
        return cls(
            Path(args["out"]),
            Path(args["data"]),
            parse_encoder_spec(args["encoder"], args["weights"]),
            config,
            args["device"],
            int(args["batch_size"]),
            args["workers"],
            int(args["n_rows"]),
            int(args["unit_rows"]),
            [int(u) for u in args["pending"]],
            dict(args["dtypes"]),
            tuple(args["clip"]) if args["clip"] else None,
            str(args.get("ledger") or ""),
        )


def resolve_device(options: EmbedOptions, *, check: bool = True) -> tuple[str, ProcessPlan]:
    """The device kind and the processes for ``options``; ``check=False`` (dry runs) plans GPUs asked for
    with ``--gpus`` without looking for them."""
    if options.batch_size < 1 or options.processes < 1 or (options.gpus is not None and options.gpus < 1):
        raise UsageError("--batch-size, --gpus and --processes must be at least 1.")
    dev = options.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() or (not check and options.gpus) else "cpu"
    if dev not in ("cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, not '{dev}'.")
    if dev == "cuda":
        procs = ProcessPlan(options.gpus or 1, cuda=True)
        if check:
            procs.check_devices(f"--gpus {options.gpus}" if options.gpus else "--device cuda", cpu_hint="--device cpu")
        return dev, procs
    if options.gpus and options.gpus > 1:
        raise UsageError("--gpus needs CUDA devices; on CPU use --processes.")
    return dev, ProcessPlan(max(1, int(options.processes)), cuda=False)


@locks_output("embed")
def run_embed(
    out: str | Path,
    config: EmbedConfig | None = None,
    *,
    encoder: str | Path,
    data: str | Path,
    weights: str | Path | None = None,
    options: EmbedOptions | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> Artifact | dict | None:
    """Embed every sample of the dataset ``data`` with ``encoder`` into the embeddings artifact ``out``.

    Returns the complete artifact (``None`` on non-zero ranks under torchrun; a plan dict with ``dry_run``).
    """
    config = config or EmbedConfig()
    options = options or EmbedOptions()
    out = Path(out)
    if in_worker() and worker_info(False).world > 1:  # ranks of an outside torchrun: every rank runs this function
        return run_ranks(
            options,
            lambda dev, info: _prepare(
                out,
                config,
                encoder=encoder,
                data=data,
                weights=weights,
                options=options,
                device=dev,
                world=info.world,
                local=info.local_world,
                force=force,
                dry_run=False,
            )[:2],
            lambda builder, job: finish(builder, job) if builder is not None else builder_existing(out),
        )
    dev, procs = resolve_device(options, check=not dry_run)
    builder, job, enc = _prepare(
        out,
        config,
        encoder=encoder,
        data=data,
        weights=weights,
        options=options,
        device=dev,
        world=procs.world,
        force=force,
        dry_run=dry_run,
    )
    if builder is None or isinstance(job, dict):
        if isinstance(job, dict):
            job["launch"] = dry_run_command(procs) if procs.launches else None
            return job
        return builder_existing(out)
    with expecting_writes("the embeddings", array_bytes(builder.contents)):  # a full disk says how much is needed
        run_job(job, procs, enc)
        return finish(builder, job)


def run_job(job: Job, procs: ProcessPlan, encoder: FeatureEncoder | None = None) -> None:
    """Embed the job's pending units here: on ``procs`` launched processes, or in this process."""
    if not job.pending:
        return
    if procs.launches:
        _launch(job, procs)
    else:
        _work(worker_info(job.device == "cuda"), job, encoder)


def array_bytes(contents: dict) -> int:
    """Uncompressed size of the arrays the embeddings will hold (an upper bound of what they write)."""
    arrays = contents.get("arrays") or {}
    return int(sum(np.prod(a["shape"]) * np.dtype(a["dtype"]).itemsize for a in arrays.values()))


def _launch(job: Job, procs: ProcessPlan) -> None:
    """Embed the job's pending units on ``procs`` launched processes (each takes its slice)."""
    spec = LaunchSpec(
        "embed",
        f"{__name__}:run_launched",
        job.to_args(),
        dump_yaml(job.config),
        quiet=console.settings.quiet,
        verbose=console.settings.verbose,
    )
    code = launch(spec, procs)
    if code != 0:
        raise CxrjepaError(
            f"The embed processes failed (exit code {code}); see their messages above. "
            "Finished rows are kept; rerun the same command to resume."
        )


def run_launched(spec: LaunchSpec) -> None:
    """One launched worker (``python -m cxrjepa.cli.worker``): embed this rank's slice of the spec's job."""
    job = Job.from_args(spec.args, load_config(EmbedConfig, files=[spec.config_path]))
    _work(worker_info(job.device == "cuda"), job)


def builder_existing(out: Path) -> Artifact:
    return open_artifact(out, "embeddings")


@dataclass
class Layout:
    """What an embedding writes, decided from the dataset and the encoder before any row is embedded."""

    ds: DatasetArtifact
    spec: EncoderSpec
    encoder: FeatureEncoder
    shapes: dict
    dtypes: dict
    unit_rows: int

    @property
    def n(self) -> int:
        return len(self.ds.meta)

    def contents(self, data: str | Path, config: EmbedConfig, unit_rows: int | None = None) -> dict:
        """The manifest's ``contents`` (cxrjepa.embed.store.EmbeddingsContents) for arrays of ``unit_rows``."""
        enc, spec = self.encoder, self.spec
        size = input_size(config, enc)
        contents = {
            "arrays": {
                k: {"path": f"{store.ZARR}/{k}", "shape": [self.n, *s], "dtype": self.dtypes[k]}
                for k, s in self.shapes.items()
            },
            "index": store.INDEX,
            "label_columns": list(self.ds.label_columns),
            "encoder": {
                **enc.describe(),
                "load": spec.absolute(),
                "weights": str(spec.weights.resolve()) if spec.weights else None,
            },
            "dataset": {"path": str(Path(data).resolve()), "fingerprint": self.ds.artifact.content_fingerprint},
            "input_size": size,
            "unit_rows": unit_rows or self.unit_rows,
        }
        if config.patch_tokens:
            contents["arrays"][PATCH]["grid"] = list(enc.token_grid(size, size))
        return contents

    def job(
        self,
        out: Path,
        data: str | Path,
        config: EmbedConfig,
        options: EmbedOptions,
        device: str,
        unit_rows: int,
        pending: list[int],
        ledger: str = "",
    ) -> Job:
        clip = encoder_clip(self.encoder)
        batch_size = max(options.batch_size, clip[0]) if clip else options.batch_size  # at least one whole window
        return Job(
            Path(out),
            Path(data),
            self.spec,
            config,
            device,
            batch_size,
            options.workers,
            self.n,
            unit_rows,
            pending,
            self.dtypes,
            clip,
            ledger,
        )

    def announce(self, config: EmbedConfig, device: str, world: int, what: str = "") -> None:
        enc = self.encoder
        msg = (
            f"{what or f'Embedding {self.n} samples'} with '{self.spec.text}' ({enc.source}, dim {enc.embed_dim}, "
            f"{input_size(config, enc)} px) on {device}"
        )
        console.info(msg + (f" x{world}." if world > 1 else "."))


def layout_for(
    ds: DatasetArtifact,
    config: EmbedConfig,
    options: EmbedOptions,
    *,
    encoder: str | Path,
    weights: str | Path | None,
    device: str,
    world: int,
    local: int | None = None,
) -> Layout:
    """Load the encoder (on the CPU) and decide the arrays for the dataset ``ds``: shapes, dtypes, rows per unit
    for ``world`` processes; refuse a batch that cannot fit in memory (``local``: the processes on this machine)."""
    spec = parse_encoder_spec(encoder, weights)
    enc = load_encoder_for(spec, config, ds)
    check_config(config, enc)
    shapes = output_shapes(config, enc)
    dtypes = {k: (config.patch_dtype if k == PATCH else config.dtype) for k in shapes}
    n = len(ds.meta)
    unit_rows = store.balanced_unit_rows(store.unit_rows_for(shapes, np.dtype(config.patch_dtype).itemsize), n, world)
    _check_memory(enc, config, options, device, world if local is None else local, shapes, unit_rows)
    return Layout(ds, spec, enc, shapes, dtypes, unit_rows)


def _prepare(out, config, *, encoder, data, weights, options, device, world, force, dry_run, local=None):
    ds = DatasetArtifact.open(data)
    spec = parse_encoder_spec(encoder, weights)
    refs = embed_input_refs(encoder, data, weights)
    opts = {**to_dict(options), "device": device, "world_size": world}
    lay = None
    if not dry_run:
        action = plan_artifact(out, "embeddings", config, refs, force=force, version=ALGORITHM_VERSION).action
        if action in ("create", "overwrite", "resume"):
            # the encoder loads and accepts the settings (pooling, CLS, memory) before anything is written in out
            lay = layout_for(
                ds, config, options, encoder=encoder, weights=weights, device=device, world=world, local=local
            )
    builder = begin(
        out, "embeddings", config, refs, options=opts, force=force, dry_run=dry_run, version=ALGORITHM_VERSION
    )
    if builder.skipped:
        console.info(f"Embeddings '{out}' are up to date.")
        return None, None, None
    if dry_run:
        n = len(ds.meta)
        plan = {
            "dry_run": True,
            "out": str(out),
            "action": builder.action,
            "fingerprint": builder.fingerprint,
            "samples": n,
            "encoder": spec.text,
            "device": device,
            "world_size": world,
        }
        console.info(f"Would embed {n} samples of '{data}' with '{spec.text}' into '{out}' ({builder.action}).")
        return builder, plan, None
    if lay is None:
        lay = layout_for(ds, config, options, encoder=encoder, weights=weights, device=device, world=world, local=local)
    n, unit_rows = lay.n, lay.unit_rows
    ledger = store.Ledger(out)
    resumable = store.existing_unit_rows(out, n, lay.shapes, lay.dtypes) if builder.resumed else None
    if resumable:
        unit_rows = resumable  # the units of the interrupted run, whatever the number of processes now
        done = ledger.done()
        console.info(f"Resuming: {len(done)} of {len(unit_ranges(n, unit_rows))} units already written.")
    else:
        ledger.clear()
        store.create_arrays(out, n, lay.shapes, lay.dtypes, unit_rows)
        done = {}
    pending = [u for u in range(len(unit_ranges(n, unit_rows))) if u not in done]
    builder.contents.update(lay.contents(data, config, unit_rows))
    builder.write_partial()
    lay.announce(config, device, world)
    return builder, lay.job(out, data, config, options, device, unit_rows, pending), lay.encoder


def _check_memory(
    enc: FeatureEncoder,
    config: EmbedConfig,
    options: EmbedOptions,
    device: str,
    world: int,
    shapes: dict,
    unit_rows: int,
) -> None:
    """Refuse a batch size whose forward pass cannot fit (cxrjepa.core.memory), before any batch is read."""
    from cxrjepa.core.memory import check_embed_memory

    size = input_size(config, enc)
    clip = encoder_clip(enc)
    # a forward pass never crosses a unit of rows: at most unit_rows images (clips: whole windows of frames)
    batch = max(options.batch_size, clip[0]) if clip else min(options.batch_size, unit_rows)
    check_embed_memory(
        device=device,
        batch=batch,
        image_size=size,
        tokens=int(np.prod(enc.token_grid(size, size))),
        width=int(enc.embed_dim),
        params=sum(p.numel() for p in enc.parameters()),
        out_values_per_sample=int(sum(np.prod(s) for s in shapes.values())),
        unit_rows=unit_rows,
        processes=world if device == "cpu" else 1,
        enabled=options.memory_check,
    )


def _work(info: DistInfo, job: Job, encoder: FeatureEncoder | None = None) -> None:
    """Embed this rank's units: read, forward, write each finished unit's chunks, then its ledger line."""
    units = shard(job.pending, info.rank, info.world)
    if not units:
        return
    device = info.device
    if device.type == "cpu" and info.local_world > 1:  # the processes on this machine share its cores
        torch.set_num_threads(max(1, cpu_count() // info.local_world))
    ds = DatasetArtifact.open(job.data)
    enc = encoder.to(device) if encoder is not None else load_encoder_for(job.spec, job.config, ds, device)
    starts, counts = ds.frame_index
    plan = plan_for(job.clip, starts, counts, job.config.clip_frames, job.config.clip_pool)
    batches = plan_batches(plan, units, job.unit_rows, job.batch_size)
    workers = auto_workers(len(batches), info.local_world) if job.workers is None else job.workers
    loader = batch_loader(ds, plan, batches, workers=workers, pin_memory=device.type == "cuda")
    arrays = store.open_arrays(job.out, mode="r+")
    ledger = store.Ledger(job.out, info.rank, job.ledger)
    extract = Extractor(enc, job.config, device, ds.max_value)
    ranges = unit_ranges(job.n_rows, job.unit_rows)
    buf: dict[str, np.ndarray] = {}
    current = None
    t0, rows_done = time.time(), 0
    total_rows = sum(ranges[u][1] - ranges[u][0] for u in units)
    with console.progress("embed", total=total_rows, enabled=info.is_main) as bar:
        for item in loader:
            unit, lo, hi = int(item["unit"]), int(item["lo"]), int(item["hi"])
            ulo, uhi = ranges[unit]
            if unit != current:
                buf = {k: np.empty((uhi - ulo, *a.shape[1:]), dtype=a.dtype) for k, a in arrays.items()}
                current = unit
            feats = extract(item["frames"], item["counts"])
            for k, v in feats.items():
                buf[k][lo - ulo : hi - ulo] = v
            if hi == uhi:  # unit complete: arrays first, then the ledger
                for k, a in arrays.items():
                    a[ulo:uhi] = buf[k]
                ledger.append(unit, ulo, uhi, store.digest(buf))
            rows_done += hi - lo
            if info.is_main:
                bar.advance(hi - lo)
                bar.update(status=f"{rows_done / max(time.time() - t0, 1e-9):.1f} samples/s")


def finish(builder: ArtifactBuilder, job: Job) -> Artifact:
    """Write the index, the exports and the complete manifest, once every unit of rows is in the ledger."""
    out = builder.path
    ds = DatasetArtifact.open(job.data)
    done = store.Ledger(out).done()
    ranges = unit_ranges(job.n_rows, job.unit_rows)
    missing = [u for u in range(len(ranges)) if u not in done]
    if missing:
        raise CxrjepaError(f"{len(missing)} units of rows were not written; rerun the same command to resume.")
    starts, counts = ds.frame_index
    plan = plan_for(job.clip, starts, counts, job.config.clip_frames, job.config.clip_pool)
    store.write_index(out, ds.meta, {"frames_embedded": plan.counts().astype(np.int64)})
    arrays = store.open_arrays(out)
    files = []
    if job.config.format == "npy":
        files = store.export_npy(out, arrays, job.unit_rows)
    elif job.config.format == "parquet":
        files = store.export_parquet(out, arrays, ds.sample_ids, job.unit_rows)
    builder.contents["exports"] = files
    builder.counts.update(
        {"samples": job.n_rows, "frames_embedded": int(plan.frames.size), "rejected": 0, "units": len(ranges)}
    )
    check_written(store.EmbeddingsContents, builder.contents, what="an embeddings manifest's contents")
    content = hash_obj(
        {
            "fingerprint": builder.fingerprint,
            "units": [done[u]["digest"] for u in range(len(ranges))],
            "index": ds.artifact.content_fingerprint,
        }
    )
    art = builder.finish(content)
    console.info(f"Wrote {job.n_rows} embeddings to '{out}'.")
    return art


def run_ranks(
    options: EmbedOptions,
    prepare: Callable[[str, DistInfo], tuple[Any, Job | None]],
    complete: Callable[[Any, Job | None], Any],
) -> Any:
    """The ranks of an outside torchrun launch (every rank runs the same command, on one node or several):
    rank 0 prepares (``prepare(device, info)`` -> its state and the job, None when there is nothing to do)
    and broadcasts the job, every rank embeds its slice of the pending units, and rank 0 completes
    (``complete(state, job)``, whose result it returns; other ranks return None)."""
    dev = "cuda" if (options.device in ("auto", "cuda") and torch.cuda.is_available()) else "cpu"
    info = init_worker(dev == "cuda", backend="gloo")  # the ranks only exchange the job and wait for each other
    try:
        state = job = None
        if info.is_main:
            try:
                state, job = prepare(dev, info)
            except Exception:
                broadcast_object("failed", info)  # let the other ranks stop instead of waiting for a job
                raise
        job = broadcast_object(job, info)
        if isinstance(job, str):
            raise CxrjepaError("Rank 0 could not start the embedding; see its error.")
        if job is not None and job.pending:
            check_shared(info, job.out, job.data)
            _work(info, job)
        barrier(info)
        result = complete(state, job) if info.is_main else None
        barrier(info)
        return result
    finally:
        shutdown(info)


def check_shared(info: DistInfo, out: Path, data: Path) -> None:
    """Every rank must see the arrays rank 0 created in ``out`` and the dataset ``data``: with ranks on several
    nodes both must sit on storage every node shares (docs/cluster.md). Refuses on every rank at once, with one
    sentence, instead of leaving rows unwritten (the ranks agree through an all-reduce)."""
    sees = (Path(out) / store.ZARR).is_dir() and (Path(data) / "manifest.yaml").is_file()
    seen = float(all_reduce_mean(torch.tensor([float(sees)]), info))
    if seen >= 1.0:
        return
    if not sees:
        raise CxrjepaError(
            f"Rank {info.rank} on '{socket.gethostname()}' cannot see the embeddings folder '{out}' "
            f"rank 0 created, or the dataset '{data}'; with several nodes, --out and --data must be on "
            "storage every node shares (docs/cluster.md)."
        )
    blind = round((1.0 - seen) * info.world)
    raise CxrjepaError(
        f"{blind} of {info.world} ranks cannot see the embeddings folder '{out}' or the dataset "
        f"'{data}'; with several nodes, --out and --data must be on storage every node shares "
        "(docs/cluster.md)."
    )
