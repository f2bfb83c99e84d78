"""cxrjepa demo-data: write a synthetic chest X-ray DICOM archive with labels and lung masks."""

from __future__ import annotations

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
    "Write a synthetic chest X-ray archive to try cxrjepa on: DICOM phantoms in nested folders (many sizes, "
    "bit depths, MONOCHROME1/2, rescale and window tags, several transfer syntaxes, fake patient data), "
    "labels.csv with learnable findings (nodule, effusion), lung masks, and optionally ultrasound cines.\n\n"
    "Example: cxrjepa demo-data --out demo --n 240 --ultrasound 4"
)


def command(
    out: OutOpt,
    n: Annotated[int | None, typer.Option("--n", help="Number of chest radiographs (default 240).", min=1)] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed; the same seed writes identical files (default 0).")
    ] = None,
    ultrasound: Annotated[
        int | None,
        typer.Option("--ultrasound", help="Also write this many multi-frame ultrasound cines (default 0).", min=0),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    from cxrjepa.demo.api import DemoConfig, run_demo

    def run():
        cfg = stage_config(
            DemoConfig, config, set_, {"n": n, "seed": seed, "ultrasound": ultrasound}, print_only=print_config_
        )
        return run_demo(out, cfg, force=force, dry_run=dry_run)

    execute(run, json_output=json_output, quiet=quiet, verbose=verbose)
