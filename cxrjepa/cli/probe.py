"""cxrjepa probe: linear and kNN probes on frozen embeddings, with intervals, few-shot, subgroups, robustness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cxrjepa.cli.common import (
    ConfigOpt,
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    LoggerOpt,
    MemoryCheckOpt,
    OutOpt,
    PrintConfigOpt,
    QuietOpt,
    SetOpt,
    VerboseOpt,
    execute,
    stage_config,
)
from cxrjepa.core.errors import UsageError

HELP = (
    "Probe embeddings on labelled tasks: patient-level split (saved as split.csv, reused), linear and kNN "
    "probes with bootstrap 95% intervals, few-shot fractions, subgroup gaps, sex/age prediction and "
    "robustness to corruptions; with --task segmentation, dense probes (linear and small conv heads on patch "
    "tokens, Dice and IoU) against the dataset's masks. --json prints the metrics."
)


def _split_list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _pairs(values: list[str] | None, what: str) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for item in values:
        col, sep, val = item.partition("=")
        if not sep or not col or not val:
            raise UsageError(f"{what} '{item}' must look like COLUMN=VALUE.")
        out[col.strip()] = val.strip()
    return out


def command(
    embeddings: Annotated[Path, typer.Option("--embeddings", "-e", help="Embeddings artifact (from 'cxrjepa embed').")],
    out: OutOpt,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels", help="CSV of labels to join to the embeddings (default: the dataset's label columns)."
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", help="Join key for --labels: a column in both (sample_id, source_path, ...) or CSVCOL=INDEXCOL."
        ),
    ] = None,
    label_col: Annotated[
        list[str] | None,
        typer.Option("--label-col", help="Label column to probe (repeatable or comma-separated; default: all)."),
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            help="Set a task type: COLUMN=binary|multiclass|multilabel|regression (repeatable); "
            "'--task segmentation' trains dense probes on patch tokens against the dataset's masks.",
        ),
    ] = None,
    positive: Annotated[
        list[str] | None, typer.Option("--positive", help="Positive class of a binary task: COLUMN=CLASS (repeatable).")
    ] = None,
    split: Annotated[
        Path | None,
        typer.Option(
            "--split", help="Reuse this split.csv (e.g. another probe's) instead of a new patient-level split."
        ),
    ] = None,
    features: Annotated[
        str | None, typer.Option("--features", help="Embeddings array to probe: features or features_last4.")
    ] = None,
    fewshot: Annotated[
        str | None, typer.Option("--fewshot", help="Few-shot label percentages, e.g. 1,5,10,50,100 ('none' to skip).")
    ] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds per few-shot fraction.")] = None,
    bootstrap: Annotated[
        int | None, typer.Option("--bootstrap", help="Patient-level bootstrap resamples for 95% intervals (0 = none).")
    ] = None,
    corruptions: Annotated[
        str | None,
        typer.Option(
            "--corruptions", help="Re-embed test images corrupted with blur,contrast,noise,speckle (3 severities)."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="Where corrupted test images are re-embedded: auto, cpu or cuda.")
    ] = "auto",
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Frames per forward pass when re-embedding.")
    ] = 64,
    memory_check: MemoryCheckOpt = True,
    logger: LoggerOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_cfg: PrintConfigOpt = False,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    from cxrjepa.probe.api import METRICS_JSON, ProbeConfig, ProbeOptions, run_probe
    from cxrjepa.tracking import parse_loggers

    def go():
        fs = None
        if fewshot is not None:
            try:
                fs = (
                    []
                    if fewshot.strip().lower() in ("none", "off", "")
                    else [float(v) for v in fewshot.split(",") if v.strip()]
                )
            except ValueError:
                raise UsageError(f"--fewshot must be percentages like 1,5,10,50,100, not '{fewshot}'.") from None
        seg = [t for t in task or [] if t.strip().lower() == "segmentation"]
        others = [t for t in task or [] if t.strip().lower() != "segmentation"]
        flags = {
            "tasks": _split_list(label_col),
            "task_types": _pairs(others, "--task"),
            "segmentation": {"enabled": True if seg else None},
            "positive": _pairs(positive, "--positive"),
            "key": key,
            "features": features,
            "fewshot": fs,
            "fewshot_seeds": seeds,
            "bootstrap": bootstrap,
            "corruptions": _split_list([corruptions]) if corruptions else None,
        }
        cfg = stage_config(ProbeConfig, config, set_, flags, print_only=print_cfg)
        opts = ProbeOptions(
            device=device, batch_size=batch_size, memory_check=memory_check, loggers=parse_loggers(logger)
        )
        return run_probe(
            out, cfg, embeddings=embeddings, labels=labels, split=split, options=opts, force=force, dry_run=dry_run
        )

    def summarize(result):
        from cxrjepa.cli.common import exit_code_for
        from cxrjepa.core.artifact import Artifact

        if isinstance(result, Artifact):
            return json.loads((result.path / METRICS_JSON).read_text()), exit_code_for(result)
        return result, 0

    execute(go, json_output=json_out, quiet=quiet, verbose=verbose, summarize=summarize)
