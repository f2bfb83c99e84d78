"""cxrjepa embed: features per sample from an encoder, aligned with a dataset's sample order."""

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
    MemoryCheckOpt,
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
    "Embed every sample of a dataset with an encoder (a cxrjepa run or export, random:SIZE, timm:NAME with "
    "--weights, or a local Hugging Face folder). Writes features.zarr + index.parquet in the dataset's order; "
    "resumable; --gpus N shards over GPUs. On a cluster, --part K/N embeds one part of an array job and "
    "--finalize completes the artifact (docs/cluster.md)."
)


def command(
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            "-e",
            help="RUN or RUN/encoder (cxrjepa), random:SIZE\\[/PATCH] or random:RUN (random init, seeded), pixels:SIZE (raw pixels), "
            "timm:NAME (with --weights), or a local Hugging Face model folder (hf:FOLDER).",
        ),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Dataset artifact (from 'cxrjepa ingest').")] = None,
    out: OutOpt = ...,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", help="Local weights file for --encoder timm:NAME (safetensors or a torch state dict)."
        ),
    ] = None,
    last4: Annotated[
        bool | None,
        typer.Option(
            "--last4/--no-last4",
            help="Also write features_last4: the last 4 blocks' tokens, each pooled as --pooling says, concatenated.",
        ),
    ] = None,
    patch_tokens: Annotated[
        bool | None,
        typer.Option("--patch-tokens/--no-patch-tokens", help="Also write patch_tokens (N, L, D) for dense probes."),
    ] = None,
    pooling: Annotated[
        str | None,
        typer.Option(
            "--pooling",
            help="Per-image feature: mean (of patch tokens), cls, or grid:RxC (the mean token of each of R x C "
            "zones, concatenated; keeps where things are).",
        ),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Model input size in pixels (default: the encoder's own).")
    ] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="float32 or float16 for the pooled features.")] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="Extra copy besides zarr: npy (NAME.npy per array) or parquet (features.parquet)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Frames per forward pass.")] = 64,
    workers: Annotated[
        int | None, typer.Option("--workers", "-j", help="Dataset reader processes (default: automatic).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    gpus: Annotated[
        int | None,
        typer.Option("--gpus", help="GPUs to shard over, one process each (default: 1 when CUDA is available)."),
    ] = None,
    processes: Annotated[
        int, typer.Option("--processes", help="CPU processes to shard over (gloo) when running on CPU.")
    ] = 1,
    memory_check: MemoryCheckOpt = True,
    part: PartOpt = None,
    finalize: FinalizeOpt = False,
    auto_finalize: AutoFinalizeOpt = True,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_cfg: PrintConfigOpt = False,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    from cxrjepa.embed.api import EmbedConfig, EmbedOptions, run_embed

    flags = {
        "last4": last4,
        "patch_tokens": patch_tokens,
        "pooling": pooling,
        "image_size": image_size,
        "dtype": dtype,
        "format": fmt,
    }

    def go():
        from cxrjepa.core.errors import UsageError

        if finalize:
            from cxrjepa.embed.parts import finalize_embed

            if encoder or data or part:
                raise UsageError("--finalize takes only --out: the parts recorded their encoder, dataset and settings.")
            return finalize_embed(out)
        if encoder is None or data is None:
            raise UsageError("Give the encoder (--encoder) and the dataset (--data) to embed.")
        cfg = stage_config(EmbedConfig, config, set_, flags, print_only=print_cfg)
        opts = EmbedOptions(
            device=device,
            gpus=gpus,
            processes=processes,
            batch_size=batch_size,
            workers=workers,
            memory_check=memory_check,
        )
        if part is not None:
            from cxrjepa.embed.parts import run_embed_part

            if dry_run:
                raise UsageError("--dry-run plans the whole embedding; leave out --part.")
            return run_embed_part(
                out,
                part,
                cfg,
                encoder=encoder,
                data=data,
                weights=weights,
                options=opts,
                force=force,
                auto_finalize=auto_finalize,
            )
        return run_embed(
            out, cfg, encoder=encoder, data=data, weights=weights, options=opts, force=force, dry_run=dry_run
        )

    execute(
        go,
        json_output=json_out,
        quiet=quiet,
        verbose=verbose,
        summarize=part_summary if part is not None and not finalize else None,
    )
