"""Pretraining: training curves of every run on shared axes, a summary table, and collapse warnings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrjepa.pretrain.layout import RunMetrics
from cxrjepa.report import figures
from cxrjepa.report.doc import Cell, Section, Table, human_int, num
from cxrjepa.report.lineage import Variant
from cxrjepa.report.sections.base import Context, encoder_label, guarded, run_objective

#: (metric in metrics.jsonl, panel title, y label, log scale, smoothed)
CURVES = (
    ("loss", "Loss", "loss", False, True),
    ("feat_std", "Feature std (collapse if → 0)", "std", False, True),
    ("rankme", "Effective rank (RankMe)", "rank", False, True),
    ("lr", "Learning rate", "lr", False, False),
    ("wd", "Weight decay", "wd", False, False),
    ("momentum", "EMA momentum", "momentum", False, False),
    ("grad_norm", "Gradient norm", "norm", True, True),
    ("images_per_s", "Throughput", "images / s", False, True),
    ("mfu", "Model FLOPs utilisation", "MFU", False, True),
    ("gpu_mem_gb", "GPU memory", "GB", False, False),
)
#: feature std or effective rank falling below this share of its best value is flagged as collapse
COLLAPSE_DROP = 0.2
#: feature std below this is flagged whatever its history
COLLAPSE_STD = 1e-3


@dataclass
class RunCurves:
    variant: Variant
    metrics: RunMetrics


def build(ctx: Context) -> Section:
    sec = Section(
        "pretraining",
        "Pretraining",
        lead="Training curves of each run on shared axes (one colour per run), with collapse checks.",
    )
    runs = [v for v in ctx.variants if v.run is not None]
    if not runs:
        sec.note(
            "Left out: no run artifact among the inputs or their lineage; give a run (or embeddings or "
            "probes made from one) to see training curves."
        )
        return sec
    curves: list[RunCurves] = []
    for v in runs:
        m = guarded(sec, f"the metrics of run {v.label}", lambda v=v: v.run.as_run.metrics(ctx.config.metric_points))
        if m is None:
            sec.note(f"Run {v.label} has no metrics.jsonl (or metrics.csv); its curves are left out.")
        else:
            curves.append(RunCurves(v, m))
    sec.add(summary_table(runs, curves))
    for rc in curves:
        for text in collapse_warnings(rc.variant.label, rc.metrics):
            sec.note(text, "warn")
    if curves:
        guarded(sec, "the training curves", lambda: _curves(ctx, sec, curves))
    return sec


def _last(df, col: str) -> float | None:
    if col not in df:
        return None
    s = df[col].dropna()
    return float(s.iloc[-1]) if len(s) else None


def _median(df, col: str) -> float | None:
    if col not in df:
        return None
    s = df[col].dropna()
    return float(s.median()) if len(s) else None


def _max(df, col: str) -> float | None:
    if col not in df:
        return None
    s = df[col].dropna()
    return float(s.max()) if len(s) else None


def summary_table(runs: list[Variant], curves: list[RunCurves]) -> Table:
    by_run = {id(rc.variant): rc.metrics.frame for rc in curves}
    rows = []
    for v in runs:
        df = by_run.get(id(v))
        counts = v.run.as_run.counts
        steps = counts.steps
        epochs = _last(df, "epoch") if df is not None else counts.epochs
        rows.append(
            [
                Cell(v.label, strong=True, swatch=v.color, title=str(v.run.path)),
                Cell(run_objective(v.run, v)),
                Cell(encoder_label(v.run, v)),
                Cell(human_int(steps), numeric=True),
                Cell(num(epochs, 1), numeric=True),
                Cell(num(_last(df, "loss") if df is not None else None, 4), numeric=True),
                Cell(num(_last(df, "feat_std") if df is not None else None, 3), numeric=True),
                Cell(num(_last(df, "rankme") if df is not None else None, 1), numeric=True),
                Cell(num(_median(df, "images_per_s") if df is not None else None, 0), numeric=True),
                Cell(num(_max(df, "gpu_mem_gb") if df is not None else None, 1), numeric=True),
            ]
        )
    return Table(
        ["Run", "Objective", "Encoder", "Steps", "Epochs", "Final loss", "Feature std", "RankMe", "Images/s", "GPU GB"],
        rows,
        caption="Final values are those of the last logged step; images/s is the median over the run, GPU GB the peak.",
    ).without_empty_columns(keep=3)


def collapse_warnings(label: str, m: RunMetrics) -> list[str]:
    """Plain-language warnings: non-finite values, feature std or effective rank collapsing."""
    out = []
    for key, n in sorted(m.nonfinite.items()):
        if n:
            out.append(f"Run {label}: {key} was NaN or infinite at {n:,} logged step(s); training diverged there.")
    df = m.frame
    for col, name in (("feat_std", "feature std"), ("rankme", "effective rank")):
        if col not in df:
            continue
        s = df[col].replace([np.inf, -np.inf], np.nan).dropna()
        if len(s) < 2:
            continue
        best, last = float(s.max()), float(s.iloc[-1])
        if col == "feat_std" and last < COLLAPSE_STD:
            out.append(
                f"Run {label}: the {name} fell to {last:.2g} — the encoder's features have collapsed to a constant."
            )
        elif best > 0 and last < COLLAPSE_DROP * best:
            out.append(
                f"Run {label}: the {name} fell from {best:.3g} to {last:.3g} (below {COLLAPSE_DROP:.0%} of its best) — "
                "a sign of (partial) representation collapse; check the probes before using this encoder."
            )
    return out


def _curves(ctx: Context, sec: Section, curves: list[RunCurves]) -> None:
    panels = []
    for key, title, ylabel, logy, smoothed in CURVES:
        series = []
        for rc in curves:
            df = rc.metrics.frame
            if key not in df or df[key].notna().sum() == 0:
                continue
            sub = df[["step", key]].dropna()
            series.append(
                figures.Series(rc.variant.label, sub["step"].to_numpy(), sub[key].to_numpy(), rc.variant.color)
            )
        if series:
            panels.append(figures.Panel(title, series, xlabel="step", ylabel=ylabel, logy=logy, smooth=smoothed))
    if not panels:
        sec.note(
            "The runs' metrics hold no curve the report knows (loss, feature std, RankMe, learning rate, throughput)."
        )
        return
    n_points = max(len(rc.metrics.frame) for rc in curves)
    thinned = any(rc.metrics.lines > len(rc.metrics.frame) + 1 for rc in curves)
    names = ", ".join(p.title.split(" (")[0].lower() for p in panels)
    labels = ", ".join(rc.variant.label for rc in curves)
    sec.add(
        ctx.figure(
            "pretraining-curves",
            figures.line_panels(panels),
            alt=f"Line charts of {names} against training step for {len(curves)} run(s): {labels}.",
            caption="Faint lines are logged values, bold lines their moving average. "
            + (f"Long logs are thinned to about {n_points:,} evenly spaced steps. " if thinned else "")
            + "I-JEPA's loss often rises after the first epochs and is not a progress signal; "
            "feature std and effective rank are (falling towards zero means collapse).",
        )
    )
