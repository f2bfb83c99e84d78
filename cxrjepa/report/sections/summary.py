"""At a glance: headline numbers, every run's probe results side by side, and the warnings of the whole page."""

from __future__ import annotations

from cxrjepa.probe.layout import Metric
from cxrjepa.report.doc import Card, Cards, Cell, Note, Para, Section, Table, human_int, is_best
from cxrjepa.report.sections.base import Context, encoder_label, run_objective
from cxrjepa.report.sections.probes import (
    LOWER_IS_BETTER,
    fmt_metric,
    metric_name,
    ordered_probes,
    primary_metric,
    value_of,
)


def build(ctx: Context, sections: list[Section]) -> Section:
    sec = Section("summary", "At a glance")
    lin = ctx.lineage
    cards = []
    for ds in lin.datasets()[:2]:
        c = ds.as_dataset.counts
        cards.append(
            Card(
                "samples" if len(lin.datasets()) == 1 else f"samples · {ds.name}",
                human_int(c.samples),
                f"{human_int(c.rejected)} rejected",
            )
        )
    cards.append(
        Card(
            "runs",
            str(sum(v.run is not None for v in ctx.variants)),
            ", ".join(v.label for v in ctx.variants if v.run)[:60],
        )
    )
    cards.append(Card("embeddings", str(len(lin.of_kind("embeddings"))), ""))
    cards.append(Card("probes", str(len(lin.of_kind("probe"))), ""))
    sec.add(Cards(cards))

    table = side_by_side(ctx)
    if table is not None:
        sec.add(table)

    warnings = [b for s in sections for b in s.blocks if isinstance(b, Note) and b.level == "warn"]
    if warnings:
        sec.add(Para(f"{len(warnings)} warning(s) on this page:"))
        sec.add(*[Note(w.text, "warn") for w in warnings])
    left_out = [s.title for s in sections if s.empty]
    if left_out:
        sec.add(
            Para(
                "Left out for lack of inputs: " + ", ".join(left_out) + " (each section says which artifact it needs)."
            )
        )
    return sec


def side_by_side(ctx: Context) -> Table | None:
    """One row per run: what it is and its headline test metric on every task (first probe, usually linear)."""
    variants = ctx.variants
    if not variants:
        return None
    per_variant: dict[int, dict[str, tuple[str, dict[str, Metric]]]] = {}
    tasks: list[str] = []
    metric_of: dict[str, str] = {}
    for v in variants:
        found: dict[str, tuple[str, dict[str, Metric]]] = {}
        for p in v.probes:
            for task, body in p.as_probe.metrics.task_entries().items():
                if task in found or not body.probes:
                    continue
                probe = ordered_probes(body.probes)[0]
                metrics = body.probes[probe].metrics
                found[task] = (probe, metrics)
                if task not in tasks:
                    tasks.append(task)
                metric_of.setdefault(task, primary_metric(metrics.keys()) or "")
        per_variant[id(v)] = found
    best: dict[str, float] = {}
    for task in tasks:
        k = metric_of[task]
        vals = [value_of(per_variant[id(v)][task][1].get(k)) for v in variants if task in per_variant[id(v)]]
        vals = [x for x in vals if x is not None]
        if len(vals) > 1:
            best[task] = min(vals) if k in LOWER_IS_BETTER else max(vals)
    rows = []
    for v in variants:
        dataset = v.dataset.name if v.dataset is not None else "–"
        row = [
            Cell(v.label, strong=True, swatch=v.color, title=str(v.run.path if v.run else "")),
            Cell(run_objective(v.run, v)),
            Cell(encoder_label(v.run, v)),
            Cell(dataset),
        ]
        for task in tasks:
            hit = per_variant[id(v)].get(task)
            if hit is None:
                row.append(Cell("–", numeric=True))
                continue
            probe, metrics = hit
            k = metric_of[task]
            val = value_of(metrics.get(k))
            row.append(
                Cell(
                    fmt_metric(metrics.get(k)),
                    numeric=True,
                    strong=task in best and is_best(val, best[task]),
                    title=f"{probe} probe",
                )
            )
        rows.append(row)
    cols = ["Run", "Objective", "Encoder", "Dataset", *[f"{t}: {metric_name(metric_of[t])}" for t in tasks]]
    caption = (
        (
            "Runs side by side: test metrics of the first probe (linear when present) with 95 % intervals; best in bold. "
            "Details per probe are in the Probes section."
        )
        if tasks
        else "No probe results are among the inputs."
    )
    return Table(cols, rows, caption=caption)
