"""``cxrjepa ingest``: DICOM, video, volume and image archives -> a normalized zarr dataset artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrjepa.cli.common import (
    AutoFinalizeOpt,
    ConfigOpt,
    DryRunOpt,
    FinalizeOpt,
    ForceOpt,
    JsonOpt,
    OutOpt,
    PartOpt,
    PrintConfigOpt,
    QuietOpt,
    SetOpt,
    VerboseOpt,
    execute,
    part_summary,
    stage_config,
)

HELP = (
    "Turn DICOM files (any common transfer syntax), ultrasound cines and videos, volumes and PNG/JPEG images "
    "into one normalized, sharded zarr dataset with a metadata table and a failure ledger.\n\n"
    "Inputs are recognised by content; bad inputs are ledgered, never fatal (exit code 3 when some were "
    "rejected). An interrupted run resumes when rerun with the same command. Example:\n\n"
    "  cxrjepa ingest /archive/cxr --out data/cxr --size 256 --labels labels.csv --key path\n\n"
    "  cxrjepa ingest DEMO/dicom --out data/demo --masks lung=DEMO/masks\n\n"
    "On a cluster, --part K/N runs one part of an array job and --finalize assembles the parts (docs/cluster.md):\n\n"
    "  cxrjepa ingest /archive/cxr --out data/cxr --part $SLURM_ARRAY_TASK_ID/8\n\n"
    "  cxrjepa ingest --finalize --out data/cxr"
)


def command(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Input folders (walked recursively), files, or @LIST (a text file with one path per line).",
            show_default=False,
        ),
    ] = None,
    out: OutOpt = ...,
    size: Annotated[
        int | None, typer.Option("--size", help="Side of the stored square frames in pixels (default 224).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Storage dtype: uint8 or uint16 (default uint8).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", "-j", help="Worker processes (0 = one per CPU core).")] = 0,
    unit_size: Annotated[
        int,
        typer.Option(
            "--unit-size", help="Inputs per work unit, the resume granularity (0 = chosen from the input count)."
        ),
    ] = 0,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="CSV of labels to join into the metadata table.")
    ] = None,
    masks: Annotated[
        list[str] | None,
        typer.Option(
            "--masks",
            help="Folder of mask files paired with the inputs by file name (IMG1.png or IMG1_mask.png for IMG1.dcm) "
            "and stored with each image's geometry; NAME=FOLDER for binary masks of one class (repeat per class).",
        ),
    ] = None,
    mask_col: Annotated[
        str | None,
        typer.Option(
            "--mask-col",
            help="Column of the labels CSV with mask file paths (relative to the CSV), instead of --masks.",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", help="How label rows find their sample: path, filename, sop_uid or study_uid (default path)."
        ),
    ] = None,
    modality: Annotated[
        str | None, typer.Option("--modality", help="Keep only these DICOM modalities, comma-separated (e.g. CR,DX).")
    ] = None,
    fps: Annotated[
        float | None, typer.Option("--fps", help="Frame rate of stored clips, 0 for the source rate (default 15).")
    ] = None,
    max_frames: Annotated[
        int | None, typer.Option("--max-frames", help="Most frames stored per clip (default 64).")
    ] = None,
    allow_for_processing: Annotated[
        bool,
        typer.Option("--allow-for-processing", help="Also ingest FOR PROCESSING radiographs (skipped by default)."),
    ] = False,
    time_limit: Annotated[
        float,
        typer.Option(
            "--time-limit",
            help="Seconds one input may take to read; past it the input is ledgered and the run goes on.",
        ),
    ] = 300.0,
    memory_limit: Annotated[
        int,
        typer.Option(
            "--memory-limit",
            help="MB of memory each worker may allocate; past it the input is ledgered (0 = 80% of RAM over the workers, 1024-4096).",
        ),
    ] = 0,
    salt_file: Annotated[
        Path | None,
        typer.Option(
            "--salt-file",
            help="File with the secret salt for sample/patient hashes (else $CXRJEPA_SALT, else a generated one kept in ~/.config/cxrjepa).",
        ),
    ] = None,
    part: PartOpt = None,
    finalize: FinalizeOpt = False,
    auto_finalize: AutoFinalizeOpt = True,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    from cxrjepa.ingest.config import IngestConfig, IngestOptions

    flags = {
        "size": size,
        "dtype": dtype,
        "labels_key": key,
        "labels_mask_column": mask_col,
        "modality": modality.split(",") if modality else None,
        "clip_fps": fps,
        "max_frames": max_frames,
        "allow_for_processing": True if allow_for_processing else None,
    }

    def run():
        from cxrjepa.core.errors import UsageError
        from cxrjepa.ingest.api import run_ingest

        if finalize:
            from cxrjepa.ingest.parts import finalize_ingest

            if sources or part:
                raise UsageError(
                    "--finalize takes only --out (and --workers): the parts recorded their inputs and settings."
                )
            return finalize_ingest(out, workers=workers)
        cfg = stage_config(IngestConfig, config, set_, flags, print_only=print_config_)
        options = IngestOptions(
            workers=workers,
            unit_size=unit_size,
            salt_file=salt_file,
            time_limit=time_limit,
            memory_limit_mb=memory_limit,
        )
        if part is not None:
            from cxrjepa.ingest.parts import run_ingest_part

            if dry_run:
                raise UsageError("--dry-run checks the whole input; leave out --part.")
            return run_ingest_part(
                out,
                part,
                cfg,
                sources=sources or [],
                labels=labels,
                masks=masks,
                options=options,
                force=force,
                auto_finalize=auto_finalize,
            )
        return run_ingest(
            out, cfg, sources=sources or [], labels=labels, masks=masks, options=options, force=force, dry_run=dry_run
        )

    execute(
        run,
        json_output=json_output,
        quiet=quiet,
        verbose=verbose,
        summarize=part_summary if part is not None and not finalize else None,
    )
