"""cxrjepa export: an encoder as safetensors (timm), ONNX, TorchScript and a Hugging Face folder, each checked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrjepa.cli.common import (
    ConfigOpt,
    DryRunOpt,
    ForceOpt,
    JsonOpt,
    OutOpt,
    PrintConfigOpt,
    QuietOpt,
    SetOpt,
    VerboseOpt,
    execute,
    stage_config,
)

HELP = (
    "Export an encoder (a run, RUN/encoder, or an earlier export) as safetensors for timm, ONNX, TorchScript "
    "and a Hugging Face folder (AutoModel). Each format is run on a fixed batch of the run's dataset and "
    "compared with the PyTorch encoder; one above its tolerance is refused (exit 1). See docs/export.md."
)


def command(
    encoder: Annotated[
        Path,
        typer.Argument(
            help="A run artifact, an exported encoder folder (RUN/encoder) or an export artifact.",
            metavar="RUN|EXPORT",
            show_default=False,
        ),
    ],
    out: OutOpt,
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            "-f",
            help="safetensors, onnx, torchscript or hf (repeatable; default: every format "
            "the encoder can be exported to).",
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Dataset to take the check batch from (default: the run's own).")
    ] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX operator set (default 18).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_cfg: PrintConfigOpt = False,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    from cxrjepa.export.api import ExportConfig, run_export

    flags = {"formats": formats or None, "onnx_opset": opset}

    def go():
        cfg = stage_config(ExportConfig, config, set_, flags, print_only=print_cfg)
        return run_export(out, cfg, encoder=encoder, data=data, force=force, dry_run=dry_run)

    execute(go, json_output=json_out, quiet=quiet, verbose=verbose)
