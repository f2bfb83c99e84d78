"""Data: what the encoders saw (counts by modality, view, sex, age, labels), what was rejected, and images as stored."""

from __future__ import annotations

from collections import Counter

import numpy as np

from cxrjepa.data import layout
from cxrjepa.report import figures, readers
from cxrjepa.report.doc import Card, Cards, Cell, Heading, Para, Section, Table, human_int
from cxrjepa.report.lineage import Node
from cxrjepa.report.sections.base import Context, guarded
from cxrjepa.report.sections.images import label_columns, sample_images

CATEGORICAL = ("modality", "view", "sex", "format", "body_part", "manufacturer")
AGE_BINS = np.arange(0, 105, 5, dtype=np.float64)


def build(ctx: Context) -> Section:
    sec = Section(
        "data", "Data", lead="What the encoders were trained and evaluated on: counts, rejections and images as stored."
    )
    datasets = ctx.lineage.datasets()
    if not datasets:
        sec.note(
            "Left out: no dataset artifact among the inputs or their lineage; give the dataset, "
            "or an artifact made from it, to see counts and sample images."
        )
        return sec
    for ds in datasets:
        if len(datasets) > 1:
            sec.add(Heading(f"Dataset {ds.name}"))
        guarded(sec, f"the counts of dataset {ds.name}", lambda ds=ds: _counts(ctx, sec, ds))
        guarded(sec, f"the rejections of dataset {ds.name}", lambda ds=ds: _rejections(ctx, sec, ds))
        guarded(sec, f"the sample images of dataset {ds.name}", lambda ds=ds: _grid(ctx, sec, ds))
    return sec


def _counts(ctx: Context, sec: Section, ds: Node) -> None:
    counts = ds.as_dataset.counts
    contents = ds.as_dataset.contents
    shape = contents.images.shape
    size = f"{shape[-1]} × {shape[-2]} px" if len(shape) >= 3 else (f"{contents.size} px" if contents.size else "–")
    cards = [
        Card(
            "samples",
            human_int(counts.samples),
            f"from {human_int(counts.inputs)} inputs" if counts.inputs is not None else "",
        ),
        Card("frames", human_int(counts.frames), ""),
        Card("rejected", human_int(counts.rejected), "see below" if counts.rejected else "none"),
        Card("stored size", size, contents.images.dtype),
    ]
    if counts.duplicates:
        cards.append(Card("duplicates", human_int(counts.duplicates), "same pixels"))
    labels = label_columns(ds)
    if labels:
        cards.append(Card("label columns", str(len(labels)), ", ".join(labels[:4]) + ("…" if len(labels) > 4 else "")))
    sec.add(Cards(cards))

    meta = ds.path / contents.metadata
    if not meta.is_file():
        sec.note(
            f"Counts by modality, view, sex and age are left out: '{contents.metadata}' is missing from {ds.name}."
        )
        return
    summaries = readers.summarize_columns(meta, list(CATEGORICAL) + labels, {"age": AGE_BINS})
    panels = []
    alt_bits = []
    for name in [*CATEGORICAL, *labels]:
        s = summaries.get(name)
        if s is None or (not s.counts):
            continue
        items = s.counts.most_common()
        if s.missing:
            items.append(("unknown", s.missing))
        title = f"label: {name}" if name in labels else name
        panels.append((title, [k for k, _ in items], [float(v) for _, v in items]))
        alt_bits.append(
            f"{title}: " + ", ".join(f"{k} {v:,}" for k, v in items[:4]) + (", …" if len(items) > 4 else "")
        )
    if panels:
        sec.add(
            ctx.figure(
                f"data-counts-{ds.name}",
                figures.count_bars(panels),
                alt="Sample counts per category. " + "; ".join(alt_bits) + ".",
                caption="Samples per value of each metadata and label column (unknown: the value was not recorded).",
            )
        )
    age = summaries.get("age")
    if age is not None and age.hist is not None and age.hist.sum() > 0:
        known = int(age.hist.sum())
        sec.add(
            ctx.figure(
                f"data-age-{ds.name}",
                figures.histogram("age", AGE_BINS, age.hist, "years"),
                alt=f"Histogram of patient age in 5-year bins for {known:,} samples with a known age; mean {age.mean:.1f} years.",
                caption=f"Age in years ({known:,} samples with a known age, {age.missing:,} unknown; mean {age.mean:.1f}).",
            )
        )
    if not panels and (age is None or age.hist is None or not age.hist.sum()):
        sec.note("The metadata records no modality, view, sex, age or label values to count.")


def _rejections(ctx: Context, sec: Section, ds: Node) -> None:
    counts = ds.as_dataset.counts
    ledger = ds.path / (ds.as_dataset.contents.failures or layout.FAILURES)
    reasons = (
        Counter({str(k): int(v) for k, v in counts.by_reason.items()})
        if counts.by_reason
        else readers.count_failures(ledger)
    )
    rejected = counts.rejected
    if not rejected and not reasons:
        sec.add(Para(f"No input was rejected while making {ds.name}."))
        return
    sec.add(Heading("Rejected inputs"))
    items = reasons.most_common()
    total = max(rejected, 1)
    sec.add(
        Table(
            ["Reason", "Inputs", "Share"],
            [[Cell(k), Cell(f"{v:,}", numeric=True), Cell(f"{v / total:.1%}", numeric=True)] for k, v in items]
            or [[Cell("not recorded"), Cell(f"{rejected:,}", numeric=True), Cell("100%", numeric=True)]],
            caption=f"{rejected:,} inputs were rejected and listed in the failure ledger ({layout.FAILURES}); none was dropped silently.",
        )
    )


def _grid(ctx: Context, sec: Section, ds: Node) -> None:
    k = ctx.config.sample_images
    if k <= 0:
        sec.note("Sample images are turned off (sample_images = 0).")
        return
    got = sample_images(ds, k, ctx.config.seed)
    if got is None:
        sec.note(f"Sample images are left out: {ds.name} has no readable image without burned-in annotation.")
        return
    titles = [
        " · ".join(b for b in (lab, view) if b) or f"sample {int(r)}"
        for r, lab, view in zip(got.rows, got.labels, got.views)
    ]
    shown = Counter(got.labels) if got.label_column else Counter()
    how = f"spread over the values of '{got.label_column}'" if got.label_column else "at random"
    sec.add(
        Heading("Sample images"),
        ctx.figure(
            f"data-samples-{ds.name}",
            figures.image_grid([readers.to_unit(f) for f in got.frames], titles),
            alt=f"A grid of {len(got.frames)} stored images from {ds.name}, chosen {how}"
            + (": " + ", ".join(f"{v} × {k}" for k, v in shown.most_common()) if shown else "")
            + ".",
            caption=f"{len(got.frames)} of {got.total:,} samples, chosen {how} (seed {ctx.config.seed}); "
            "pixels as stored (after windowing, cropping and resizing; middle frame of clips). "
            "Samples flagged with burned-in annotation are never shown.",
        ),
    )
