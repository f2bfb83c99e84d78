"""Probes: metric tables with intervals, ROC curves, confusion matrices, few-shot, subgroup and corruption
curves; every run's probes side by side (rows of one table, lines of one chart, in the run's colour).
Segmentation probes (metrics.json ``segmentation``) get the same tables, Dice few-shot curves and overlays
of predicted and true masks on test images.

Reads each probe through its layout (:class:`cxrjepa.probe.layout.Probe`: metrics.json checked against the
schema the probe stage writes with), split.csv, and predictions.parquet only to draw a binary ROC curve when
metrics.json carries none; for overlays, segmentation.parquet, a few frames of segmentation.zarr and of the
dataset's images and masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrjepa.probe.layout import FewshotMetric, Metric, ProbeMetrics, RocCurve, SegmentationResult, TaskResult
from cxrjepa.report import figures, readers
from cxrjepa.report.doc import Cell, Details, Heading, Para, Section, Table, human_int, is_best, num
from cxrjepa.report.lineage import Node, Variant
from cxrjepa.report.sections.base import Context, guarded

METRIC_NAMES = {
    "dice": "Dice",
    "iou": "IoU",
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "macro_f1": "macro-F1",
    "f1": "F1",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced acc.",
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R²",
}
METRIC_ORDER = ("dice", "iou", "auroc", "auprc", "macro_f1", "accuracy", "balanced_accuracy", "r2", "mae", "rmse")
LOWER_IS_BETTER = {"mae", "rmse", "mse", "loss", "brier", "ece"}
PRIMARY = ("dice", "auroc", "macro_f1", "accuracy", "r2", "mae")
PROBE_ORDER = ("linear", "knn", "conv")
SEGMENTATION = "segmentation"
#: overlay colours: true mask outline, predicted mask fill
TRUE_COLOR = (0.17, 0.63, 0.17)
PRED_COLOR = (0.84, 0.15, 0.16)


@dataclass
class Entry:
    """One probe artifact: whose it is, its label in tables and legends, its metrics.json."""

    variant: Variant
    node: Node
    label: str
    metrics: ProbeMetrics

    @property
    def tasks(self) -> dict[str, TaskResult]:
        return self.metrics.tasks

    @property
    def segmentation(self) -> SegmentationResult | None:
        return self.metrics.segmentation


def metric_name(key: str) -> str:
    return METRIC_NAMES.get(key, key.replace("_", " "))


def value_of(m: Metric | FewshotMetric | None) -> float | None:
    """A metric's value (few-shot: its mean over seeds); ``None`` when undefined."""
    v = m.mean if isinstance(m, FewshotMetric) else m.value if isinstance(m, Metric) else None
    return None if v is None or v != v else float(v)


def ci_of(m: Metric | FewshotMetric | None) -> tuple[float, float] | None:
    ci = m.ci if isinstance(m, Metric) else None
    if ci is None or len(ci) != 2 or any(c is None for c in ci):
        return None
    return float(ci[0]), float(ci[1])


def fmt_metric(m, digits: int = 3) -> str:
    v = value_of(m)
    if v is None:
        return "–"
    ci = ci_of(m)
    return f"{num(v, digits)} ({num(ci[0], digits)}–{num(ci[1], digits)})" if ci else num(v, digits)


def primary_metric(names) -> str | None:
    names = list(names)
    for p in PRIMARY:
        if p in names:
            return p
    return names[0] if names else None


def ordered_probes(probes: dict) -> list[str]:
    return sorted(probes, key=lambda p: (PROBE_ORDER.index(p) if p in PROBE_ORDER else len(PROBE_ORDER), p))


def entries_of(ctx: Context) -> list[Entry]:
    """Every probe of every variant with its metrics.json (checked: a probe that does not match is an error)."""
    out = []
    for v in ctx.variants:
        for p in v.probes:
            label = v.label if len(v.probes) == 1 else f"{v.label} · {p.name}"
            out.append(Entry(v, p, label, p.as_probe.metrics))
    return out


def build(ctx: Context) -> Section:
    sec = Section(
        "probes",
        "Probes",
        lead="Frozen-feature probes (linear and k-NN) evaluated on held-out patients, with bootstrap 95 % intervals.",
    )
    entries = entries_of(ctx)
    if not entries:
        if not any(v.probes for v in ctx.variants):
            sec.note(
                "Left out: no probe artifact among the inputs; give probe artifacts (cxrjepa probe) to see "
                "metrics, ROC curves and subgroup gaps."
            )
        return sec
    guarded(sec, "the split table", lambda: _splits(sec, entries))
    tasks: list[str] = []
    for e in entries:
        tasks += [t for t in e.tasks if t not in tasks]
    for task in tasks:
        have = [(e, e.tasks[task]) for e in entries if task in e.tasks]
        guarded(sec, f"task {task}", lambda task=task, have=have: _task(ctx, sec, task, have))
    seg = [(e, e.segmentation) for e in entries if e.segmentation is not None]
    if seg:
        guarded(sec, "the segmentation probes", lambda: _segmentation(ctx, sec, seg))
    guarded(sec, "the attribute probes", lambda: _attributes(sec, entries))
    return sec


# ---------------------------------------------------------------- splits


def _splits(sec: Section, entries: list[Entry]) -> None:
    rows = []
    for e in entries:
        split = e.node.as_probe.split()
        if split is not None and "split" in split:
            counts = split["split"].value_counts()
            patients = split["patient_key"].nunique() if "patient_key" in split else None
            leak = 0
            if "patient_key" in split:
                per = split.groupby("patient_key")["split"].nunique()
                leak = int((per > 1).sum())
            if leak:
                sec.note(
                    f"Probe {e.label}: {leak:,} patient(s) appear in more than one split; test metrics are optimistic.",
                    "warn",
                )
            rows.append(
                [
                    Cell(e.label, swatch=e.variant.color),
                    Cell(human_int(counts.get("train", 0)), numeric=True),
                    Cell(human_int(counts.get("val", 0)), numeric=True),
                    Cell(human_int(counts.get("test", 0)), numeric=True),
                    Cell(human_int(patients), numeric=True),
                    Cell("none" if not leak else f"{leak:,} patients", strong=bool(leak)),
                ]
            )
        else:
            first = next(iter(e.metrics.task_entries().values()), None)
            n = first.n if first is not None else {}
            rows.append(
                [
                    Cell(e.label, swatch=e.variant.color),
                    Cell(human_int(n.get("train")), numeric=True),
                    Cell(human_int(n.get("val")), numeric=True),
                    Cell(human_int(n.get("test")), numeric=True),
                    Cell("–", numeric=True),
                    Cell("split.csv missing"),
                ]
            )
    sec.add(
        Table(
            ["Probe", "Train", "Val", "Test", "Patients", "Patients in several splits"],
            rows,
            caption="Samples per split (patient-level: no patient is in two splits).",
        )
    )


# ---------------------------------------------------------------- one task


def _task(ctx: Context, sec: Section, task: str, have: list[tuple[Entry, TaskResult]]) -> None:
    first = have[0][1]
    classes = first.classes
    desc = [first.type]
    if first.positive is not None:
        desc.append(f"positive class {first.positive}")
    elif classes:
        desc.append(f"{len(classes)} classes" if len(classes) > 6 else "classes " + ", ".join(classes))
    text = "; ".join(desc)
    sec.add(Heading(f"Task: {task}"), Para(f"{text[:1].upper()}{text[1:]}."))
    sec.add(_metric_table(have))
    paired = _paired_table(task, have)
    if paired is not None:
        sec.add(paired)
    per_class = _per_class_table(have)
    if per_class is not None:
        sec.add(Details(f"Per-class metrics of {task}", [per_class]))
    guarded(sec, f"the ROC curves of {task}", lambda: _roc(ctx, sec, task, have))
    guarded(sec, f"the confusion matrices of {task}", lambda: _confusion(ctx, sec, task, have))
    guarded(sec, f"the few-shot curves of {task}", lambda: _fewshot(ctx, sec, task, have))
    guarded(sec, f"the subgroup metrics of {task}", lambda: _subgroups(ctx, sec, task, have))
    guarded(sec, f"the corruption curves of {task}", lambda: _robustness(ctx, sec, task, have))


def _metric_table(have: list[tuple[Entry, TaskResult]]) -> Table:
    names: list[str] = []
    rows_src = []
    for e, t in have:
        for probe in ordered_probes(t.probes):
            metrics = t.probes[probe].metrics
            names += [k for k in metrics if k not in names]
            rows_src.append((e, probe, metrics, t.n.get("test")))
    names = sorted(names, key=lambda k: (METRIC_ORDER.index(k) if k in METRIC_ORDER else len(METRIC_ORDER), k))
    best: dict[str, float] = {}
    for k in names:
        vals = [value_of(m.get(k)) for _, _, m, _ in rows_src if value_of(m.get(k)) is not None]
        if len(vals) > 1:
            best[k] = min(vals) if k in LOWER_IS_BETTER else max(vals)
    rows = []
    for e, probe, metrics, n_test in rows_src:
        row = [Cell(e.label, swatch=e.variant.color), Cell(probe), Cell(human_int(n_test), numeric=True)]
        for k in names:
            v = value_of(metrics.get(k))
            row.append(Cell(fmt_metric(metrics.get(k)), numeric=True, strong=k in best and is_best(v, best[k])))
        rows.append(row)
    return Table(
        ["Run", "Probe", "Test n", *[metric_name(k) for k in names]],
        rows,
        caption="Test-set metrics with bootstrap 95 % intervals in brackets; the best value of each column is bold"
        + (" (lower is better for MAE)." if "mae" in names else "."),
    )


def _paired_table(task: str, have: list[tuple[Entry, TaskResult]]) -> Table | None:
    """The first run's primary metric minus each other run's, on the same test samples, with paired intervals
    (cxrjepa.probe.compare); ``None`` with fewer than two runs or nothing that pairs."""
    from cxrjepa.probe.compare import compare_probes

    if len(have) < 2:
        return None
    (ref, ref_task), rows = have[0], []
    metric = primary_metric([k for kind in ref_task.probes for k in ref_task.probes[kind].metrics if k in METRIC_NAMES])
    if metric is None:
        return None
    boot = ref.metrics.bootstrap or {}
    for e, t in have[1:]:
        for kind in ordered_probes(ref_task.probes):
            if kind not in t.probes:
                continue
            d = compare_probes(
                ref.node.as_probe,
                e.node.as_probe,
                task,
                kind,
                n_boot=int(boot.get("resamples", 1000)),
                seed=int(boot.get("seed", 0)),
            )
            if d is None or metric not in d:
                continue
            value, ci = d[metric]["value"], d[metric].get("ci")
            if value is None:
                continue
            text = f"{value:+.3f}" + (f" ({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "")
            confirmed = ci is not None and (ci[0] > 0 or ci[1] < 0)
            verdict = "no difference the data confirm"
            if confirmed:
                better = (ci[0] > 0) != (metric in LOWER_IS_BETTER)
                verdict = f"{ref.label} {'better' if better else 'worse'}"
            rows.append(
                [
                    Cell(e.label, swatch=e.variant.color),
                    Cell(kind),
                    Cell(text, numeric=True, strong=confirmed),
                    Cell(verdict),
                ]
            )
    if not rows:
        return None
    return Table(
        ["Compared with", "Probe", f"{ref.label} minus it ({metric_name(metric)})", "Verdict"],
        rows,
        caption=f"Paired differences on the same test samples: {ref.label}'s {metric_name(metric)} minus each "
        "other run's, with a 95 % interval from the same patient-bootstrap resamples for both (an interval that "
        "excludes 0 is a difference these test patients confirm).",
    )


def _per_class_table(have: list[tuple[Entry, TaskResult]]) -> Table | None:
    rows = []
    names: list[str] = []
    for _, t in have:
        for probe in ordered_probes(t.probes):
            for metrics in t.probes[probe].per_class.values():
                names += [k for k in metrics if k not in names]
    if not names:
        return None
    if len(have[0][1].classes) <= 2 and have[0][1].type == "binary":
        return None
    for e, t in have:
        for probe in ordered_probes(t.probes):
            for cls, metrics in t.probes[probe].per_class.items():
                rows.append(
                    [Cell(str(cls)), Cell(e.label, swatch=e.variant.color), Cell(probe)]
                    + [Cell(fmt_metric(metrics.get(k)), numeric=True) for k in names]
                )
    rows.sort(key=lambda r: r[0].text)
    return Table(["Class", "Run", "Probe", *[metric_name(k) for k in names]], rows)


def _probe_styles(have) -> dict[str, str]:
    probes = []
    for _, t in have:
        probes += [p for p in ordered_probes(t.probes) if p not in probes]
    return {p: figures.LINESTYLES[i % len(figures.LINESTYLES)] for i, p in enumerate(probes)}


def _roc(ctx: Context, sec: Section, task: str, have: list[tuple[Entry, TaskResult]]) -> None:
    ttype = have[0][1].type
    if ttype == "regression":
        return
    styles = _probe_styles(have)
    binary = ttype == "binary"
    panels = []
    overlay = figures.Panel(
        "ROC (test set)", xlabel="false positive rate", ylabel="true positive rate", diagonal=True, ylim=(0, 1.01)
    )
    from_predictions = False
    for e, t in have:
        positive = t.positive
        for probe in ordered_probes(t.probes):
            pr = t.probes[probe]
            roc = pr.curves.roc
            auroc = value_of(pr.metrics.get("auroc"))
            if binary:
                curve = roc.get(str(positive)) if positive is not None else None
                if curve is None and len(roc) == 1:
                    curve = next(iter(roc.values()))
                if curve is None:
                    curve = _roc_from_predictions(e.node, task, probe, positive)
                    from_predictions |= curve is not None
                if curve is None:
                    continue
                label = f"{e.label} · {probe}" + (f" (AUROC {auroc:.3f})" if auroc is not None else "")
                overlay.series.append(
                    figures.Series(label, np.asarray(curve.fpr), np.asarray(curve.tpr), e.variant.color, styles[probe])
                )
            elif roc and probe == ordered_probes(t.probes)[0]:
                p = figures.Panel(
                    f"{e.label} · {probe}",
                    xlabel="false positive rate",
                    ylabel="true positive rate",
                    diagonal=True,
                    ylim=(0, 1.01),
                )
                for i, (cls, curve) in enumerate(list(roc.items())[: len(figures.CATEGORY_COLORS)]):
                    p.series.append(
                        figures.Series(
                            str(cls),
                            np.asarray(curve.fpr),
                            np.asarray(curve.tpr),
                            figures.CATEGORY_COLORS[i % len(figures.CATEGORY_COLORS)],
                        )
                    )
                panels.append(p)
    if binary and overlay.series:
        panels = [overlay]
    if not panels:
        sec.note(f"ROC curves of {task} are left out: the probes recorded no curves or test predictions.")
        return
    what = "one line per run and probe" if binary else "one panel per run, one line per class"
    png = figures.line_panels(panels, max_cols=3, w=4.6 if binary else 3.6, h=3.6 if binary else 3.1)
    sec.add(
        ctx.figure(
            f"probe-roc-{task}",
            png,
            alt=f"ROC curves of task {task} on the test set, {what}: "
            + "; ".join(s.label for p in panels for s in p.series[:8])
            + ".",
            caption=f"ROC curves on the test set ({what}; solid: linear, dashed: k-NN)."
            + (" Curves drawn from predictions.parquet." if from_predictions else ""),
        )
    )


def _roc_from_predictions(node: Node, task: str, probe: str, positive) -> RocCurve | None:
    from sklearn.metrics import roc_curve

    df = node.as_probe.predictions(task, probe, "test")
    if df is None or df.empty or positive is None:
        return None
    col = f"score_{positive}"
    if col not in df or "target" not in df:
        return None
    y = (df["target"].astype(str) == str(positive)).to_numpy()
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, df[col].to_numpy(np.float64))
    return RocCurve(fpr.tolist(), tpr.tolist())


def _confusion(ctx: Context, sec: Section, task: str, have: list[tuple[Entry, TaskResult]]) -> None:
    mats = []
    for e, t in have:
        for probe in ordered_probes(t.probes):
            conf = t.probes[probe].curves.confusion
            if conf is not None and conf.matrix:
                labels = [str(x) for x in conf.labels or range(len(conf.matrix))]
                mats.append((f"{e.label} · {probe}", labels, np.asarray(conf.matrix), e.variant.color))
                break  # the first probe (linear) per run keeps the figure small
    if not mats:
        return
    sec.add(
        ctx.figure(
            f"probe-confusion-{task}",
            figures.confusion_matrices(mats),
            alt=f"Confusion matrices of task {task} on the test set for "
            + ", ".join(m[0] for m in mats)
            + ". "
            + " ".join(
                f"{m[0]}: "
                + ", ".join(f"{m[1][i]} recall {m[2][i, i] / max(m[2][i].sum(), 1):.0%}" for i in range(len(m[1])))
                + "."
                for m in mats
            ),
            caption="Confusion matrices on the test set (rows: true class; colour and percentage: share of the row).",
        )
    )


def _fewshot(ctx: Context, sec: Section, task: str, have: list[tuple[Entry, TaskResult]]) -> None:
    styles = _probe_styles(have)
    series = []
    metric = None
    for e, t in have:
        for probe in ordered_probes(t.fewshot):
            points = t.fewshot[probe]
            if not points:
                continue
            if metric is None:
                metric = primary_metric(points[0].metrics.keys())
            pts = sorted(((p.fraction, p.metrics.get(metric)) for p in points), key=lambda x: x[0])
            full = t.probes[probe].metrics.get(metric) if probe in t.probes else None
            if full is not None and not any(abs(f - 1.0) < 1e-9 for f, _ in pts):
                pts.append((1.0, FewshotMetric(mean=value_of(full), std=0.0)))
            x = np.asarray([f for f, _ in pts])
            y = np.asarray([value_of(m) if value_of(m) is not None else np.nan for _, m in pts], dtype=np.float64)
            sd = np.asarray([float(m.std or 0.0) if isinstance(m, FewshotMetric) else 0.0 for _, m in pts])
            series.append(
                figures.Series(f"{e.label} · {probe}", x, y, e.variant.color, styles[probe], y - sd, y + sd, marker="o")
            )
    if not series or metric is None:
        return
    panel = figures.Panel(
        f"Few-shot {metric_name(metric)}",
        series,
        xlabel="fraction of training labels",
        ylabel=metric_name(metric),
        logx=True,
    )
    sec.add(
        ctx.figure(
            f"probe-fewshot-{task}",
            figures.line_panels([panel], w=5.2, h=3.4),
            alt=f"Few-shot curves of task {task}: test {metric_name(metric)} against the fraction of training labels "
            "(log scale) for "
            + ", ".join(s.label for s in series)
            + ". "
            + " ".join(f"{s.label}: {s.y[0]:.3f} at {s.x[0]:.0%} to {s.y[-1]:.3f} at {s.x[-1]:.0%}." for s in series),
            caption=f"Test {metric_name(metric)} when probes are trained on a fraction of the training labels "
            "(mean over seeds; band: ± one standard deviation; 100 %: the full probe).",
        )
    )


def _subgroups(ctx: Context, sec: Section, task: str, have: list[tuple[Entry, TaskResult]]) -> None:
    attrs: list[str] = []
    for _, t in have:
        attrs += [a for a in t.subgroups if a not in attrs]
    if not attrs:
        return
    sec.add(Heading(f"Subgroups of {task}"))
    panels = []
    rows = []
    metric_label = ""
    for attr in attrs:
        groups: list[str] = []
        for _, t in have:
            if attr in t.subgroups:
                groups += [g for g in t.subgroups[attr].groups if g not in groups]
        bars = []
        for e, t in have:
            sg = t.subgroups.get(attr)
            if sg is None:
                continue
            gs = sg.groups
            scored = next((grp.metrics for grp in gs.values() if grp.metrics), {})
            metric = sg.gap.metric if sg.gap is not None else primary_metric(scored.keys())
            if metric is None:
                continue
            metric_label = metric_name(metric)

            def of(g: str, metric=metric, gs=gs) -> Metric | None:
                return (gs[g].metrics or {}).get(metric) if g in gs else None

            vals = [value_of(of(g)) for g in groups]
            cis = [ci_of(of(g)) for g in groups]
            bars.append((e.label, e.variant.color, vals, cis))
            between = sg.gap.between if sg.gap is not None else []
            rows.append(
                [Cell(attr), Cell(e.label, swatch=e.variant.color), Cell(metric_name(metric))]
                + [
                    Cell(
                        " · ".join(
                            f"{g} {fmt_metric(of(g))} (n={human_int(gs[g].n if g in gs else None)})" for g in groups
                        )
                    )
                ]
                + [
                    Cell(num(sg.gap.value if sg.gap is not None else None), numeric=True, strong=True),
                    Cell(" vs ".join(str(b) for b in between) if between else "–"),
                ]
            )
        if bars:
            panels.append((attr, groups, bars))
    sec.add(
        Table(
            ["Attribute", "Run", "Metric", "By group (95 % interval, n)", "Gap", "Between"],
            rows,
            caption="The same test metric per subgroup; the gap is the largest difference between groups.",
        )
    )
    if panels:
        sec.add(
            ctx.figure(
                f"probe-subgroups-{task}",
                figures.grouped_bars(panels, metric_label),
                alt=f"Bar charts of test {metric_label} of task {task} per subgroup of "
                + ", ".join(p[0] for p in panels)
                + ", one bar per run with 95 % interval whiskers.",
                caption=f"Test {metric_label} by subgroup (whiskers: bootstrap 95 % intervals).",
            )
        )


def _robustness(ctx: Context, sec: Section, task: str, have: list[tuple[Entry, TaskResult]]) -> None:
    corruptions: list[str] = []
    for _, t in have:
        corruptions += [c for c in t.corruptions if c not in corruptions]
    if not corruptions:
        return
    metric = None
    for _, t in have:
        metric = metric or primary_metric(t.clean.keys())
    if metric is None:
        return
    panels = []
    for corr in corruptions:
        p = figures.Panel(corr, xlabel="severity (0 = clean)", ylabel=metric_name(metric))
        for e, t in have:
            pts = [(0.0, value_of(t.clean.get(metric)))]
            for item in t.corruptions.get(corr, []):
                pts.append((float(item.severity), value_of(item.metrics.get(metric))))
            pts = [(s, v) for s, v in pts if v is not None]
            if len(pts) > 1:
                p.series.append(
                    figures.Series(
                        e.label,
                        np.asarray([s for s, _ in pts]),
                        np.asarray([v for _, v in pts]),
                        e.variant.color,
                        marker="o",
                    )
                )
        if p.series:
            panels.append(p)
    if not panels:
        return
    sec.add(
        ctx.figure(
            f"probe-robustness-{task}",
            figures.line_panels(panels),
            alt=f"Line charts of test {metric_name(metric)} of task {task} against corruption severity for "
            + ", ".join(p.title for p in panels)
            + "; one line per run.",
            caption=f"Test {metric_name(metric)} under corruptions of increasing severity, with probes trained on clean images.",
        )
    )


# ---------------------------------------------------------------- segmentation


def _segmentation(ctx: Context, sec: Section, have: list[tuple[Entry, SegmentationResult]]) -> None:
    first = have[0][1]
    classes = first.classes
    heads = ", ".join(dict.fromkeys(h for _, s in have for h in ordered_probes(s.probes)))
    sec.add(
        Heading("Segmentation" + (f": {', '.join(classes)}" if classes else "")),
        Para(
            f"Dense probes on frozen patch tokens ({heads} heads; grid {'×'.join(map(str, first.grid))}, "
            f"upsampled to {first.image_size or '?'} px) against the dataset's masks: Dice and IoU averaged over test "
            "images, 95 % intervals from a patient bootstrap."
        ),
    )
    sec.add(_metric_table(have))
    if len(classes) > 1:
        per_class = _per_class_table(have)
        if per_class is not None:
            sec.add(Details("Per-class Dice and IoU", [per_class]))
    guarded(sec, "the segmentation few-shot curves", lambda: _fewshot(ctx, sec, SEGMENTATION, have))
    guarded(sec, "the segmentation overlays", lambda: _overlays(ctx, sec, have))


def overlay(image: np.ndarray, true: np.ndarray | None, pred: np.ndarray | None) -> np.ndarray:
    """An RGB picture: the grey image, the predicted mask filled in red, the true mask outlined in green."""
    import cv2

    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    if pred is not None:
        fg = (pred > 0) & (pred != 255)
        rgb[fg] = 0.55 * rgb[fg] + 0.45 * np.asarray(PRED_COLOR, np.float32)
    if true is not None:
        t = ((true > 0) & (true != 255)).astype(np.uint8)
        edge = (t - cv2.erode(t, np.ones((3, 3), np.uint8))).astype(bool)
        rgb[edge] = TRUE_COLOR
    return rgb


def _overlays(ctx: Context, sec: Section, have: list[tuple[Entry, SegmentationResult]], k: int = 4) -> None:
    """Test images from the worst to the best Dice of the first probe; one row per run and head."""
    import zarr

    from cxrjepa.data import layout
    from cxrjepa.report.sections.images import hidden_ids

    e0, s0 = have[0]
    ds = e0.node.upstream("dataset")
    table = e0.node.as_probe.segmentation_table()
    if ds is None or table is None or table.empty:
        sec.note("Segmentation overlays are left out: the dataset or the per-image table of the probe cannot be found.")
        return
    loc = readers.frame_locator(ds.path)
    images = readers.open_images(ds.path)
    try:
        masks = zarr.open_group(str(ds.path / layout.ZARR), mode="r")[layout.MASKS]
    except Exception:
        masks = None
    if loc is None or images is None or masks is None:
        sec.note("Segmentation overlays are left out: the dataset's images or masks cannot be read.")
        return
    hidden = hidden_ids(ds)
    head0 = ordered_probes(s0.probes)[0]
    per = (
        table[(table["head"] == head0) & ~table["sample_id"].isin(hidden)]
        .groupby("sample_id", sort=True)["dice"]
        .mean()
    )
    per = per.dropna().sort_values(kind="mergesort")
    if per.empty:
        return
    picks = list(
        dict.fromkeys(per.index[np.unique(np.linspace(0, len(per) - 1, min(k, len(per))).round().astype(int))])
    )
    pos = {sid: i for i, sid in enumerate(loc.sample_id)}
    frames = [loc.middle(pos[s]) for s in picks if s in pos]
    picks = [s for s in picks if s in pos]
    grey = [readers.to_unit(f) for f in readers.read_frames(images, frames)]
    truth = readers.read_frames(masks, frames)
    rows = [
        ("image\ntrue mask", "#333333", [figures.Tile(overlay(g, t, None), "true mask") for g, t in zip(grey, truth)])
    ]
    for e, s in have:
        preds = e.node.as_probe.segmentation_masks()
        tab = table if e is e0 else e.node.as_probe.segmentation_table()
        if preds is None:
            continue
        ids, group = preds
        index = {sid: i for i, sid in enumerate(ids)}
        for head in ordered_probes(s.probes):
            if head not in group:
                continue
            tiles = []
            for sid, g, t in zip(picks, grey, truth):
                if sid not in index:
                    tiles.append(figures.Tile(None))
                    continue
                pred = np.asarray(group[head][index[sid]])
                d = tab[(tab["sample_id"] == sid) & (tab["head"] == head)]["dice"].mean() if tab is not None else np.nan
                tiles.append(figures.Tile(overlay(g, t, pred), f"Dice {d:.3f}" if np.isfinite(d) else ""))
            rows.append((f"{e.label}\n{head} head", e.variant.color, tiles))
    if len(rows) < 2:
        sec.note("Segmentation overlays are left out: the probes stored no predicted masks.")
        return
    sec.add(
        ctx.figure(
            "probe-segmentation-overlays",
            figures.tile_rows(rows, cell=1.6, label_chars=24),
            alt=f"Test images ordered from the lowest to the highest Dice of {e0.label} · {head0}; first row the true "
            "masks outlined in green, then one row per run and head with the predicted mask filled in red and "
            "the true outline in green.",
            caption="Predicted (red fill) and true (green outline) masks on test images, from the worst to the best "
            f"Dice of {e0.label} · {head0}.",
        )
    )


# ---------------------------------------------------------------- attributes


def _attributes(sec: Section, entries: list[Entry]) -> None:
    keys: list[tuple[str, str]] = []
    for e in entries:
        for attr, body in e.metrics.attributes.items():
            for m in body.metrics:
                if (attr, m) not in keys:
                    keys.append((attr, m))
    if not keys:
        return
    rows = []
    for attr, m in keys:
        row = [Cell(attr), Cell(metric_name(m))]
        for e in entries:
            body = e.metrics.attributes.get(attr)
            row.append(Cell(fmt_metric(body.metrics.get(m) if body is not None else None), numeric=True))
        rows.append(row)
    sec.add(
        Heading("What the embeddings reveal about the patient"),
        Para(
            "How well a linear probe on the frozen features predicts patient attributes. High values mean the "
            "features encode them, which downstream models can pick up as a shortcut or a source of bias."
        ),
        Table(["Attribute", "Metric", *[e.label for e in entries]], rows),
    )
