"""``run_report``: the report stage's Python API (``cxrjepa report`` calls it; so can a pipeline or a notebook)."""

from __future__ import annotations

import datetime as _dt
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import cxrjepa
from cxrjepa.core import console
from cxrjepa.core.artifact import Artifact, begin, input_refs, open_artifact
from cxrjepa.core.atomic import atomic_write_bytes, atomic_write_text
from cxrjepa.core.errors import UsageError
from cxrjepa.core.fingerprint import hash_files
from cxrjepa.core.lock import locks_output
from cxrjepa.core.schema import SchemaError
from cxrjepa.report import html, markdown
from cxrjepa.report.config import ReportConfig
from cxrjepa.report.doc import Document, Note, Section
from cxrjepa.report.lineage import READABLE, collect
from cxrjepa.report.sections import data, embeddings, features, pretraining, probes, provenance, summary
from cxrjepa.report.sections.base import Context

#: bump when a change to this stage's code changes what it writes for the same settings and inputs
#: (docs/artifacts.md, "Algorithm versions")
ALGORITHM_VERSION = 1
INDEX = "index.html"
SUMMARY = "summary.md"
FIGURES = markdown.FIGURES_DIR

#: (section id, title, builder) in page order, after "At a glance"
SECTIONS: tuple[tuple[str, str, Callable[[Context], Section]], ...] = (
    ("provenance", "Provenance", provenance.build),
    ("data", "Data", data.build),
    ("pretraining", "Pretraining", pretraining.build),
    ("probes", "Probes", probes.build),
    ("embeddings", "Embeddings", embeddings.build),
    ("features", "Patch features and retrieval", features.build),
)


def build_document(
    artifacts: Sequence[str | Path], config: ReportConfig, device: str = "auto"
) -> tuple[Document, Context]:
    """The report as a document (nothing written): lineage first, then every section."""
    lineage = collect(list(artifacts))
    ctx = Context(lineage, config, device)
    sections = []
    for sid, title, fn in SECTIONS:
        console.info(f"report: {title.lower()}")
        started = time.perf_counter()
        try:
            sec = fn(ctx)
        except SchemaError:
            raise  # an artifact that does not match its kind's schema: one sentence naming the stage to rerun
        except Exception as exc:  # one broken section must not cost the whole page
            if console.settings.verbose:
                traceback.print_exc()
            console.warn(f"The {title} section could not be drawn ({type(exc).__name__}); it is left out.")
            sec = Section(sid, title)
            sec.note(f"This section could not be drawn ({type(exc).__name__}: {str(exc)[:160]}).", "warn")
        console.detail(f"report: {title.lower()} took {time.perf_counter() - started:.1f} s")
        sections.append(sec)
    sections.insert(0, summary.build(ctx, sections))
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    given = [n.name for n in lineage.nodes if n.given]
    subtitle = (
        f"{', '.join(given)} and {len(lineage.nodes) - len(given)} upstream artifact(s) · "
        f"generated {now} by cxrjepa {cxrjepa.__version__}"
    )
    footer = (
        "Built only from the artifacts' manifests and outputs; large arrays are sampled, never loaded whole. "
        "This page is self-contained: it loads nothing from the network."
    )
    return Document(config.title, subtitle, sections, footer), ctx


@locks_output("report")
def run_report(
    out: str | Path,
    config: ReportConfig | None = None,
    *,
    artifacts: Sequence[str | Path],
    device: str = "auto",
    force: bool = False,
    dry_run: bool = False,
) -> Artifact | dict:
    """Write the report artifact ``out`` (index.html, summary.md, figures/*.png) for ``artifacts``.

    ``artifacts`` may mix datasets, runs, embeddings and probes; their upstream artifacts are found
    through the manifests. ``device`` (cpu, cuda, auto) only runs the encoders for patch-feature maps.
    """
    config = config or ReportConfig()
    if not artifacts:
        raise UsageError("Give at least one artifact to report on (a dataset, run, embeddings or probe folder).")
    paths = [Path(a) for a in artifacts]
    out = Path(out)
    for p in paths:
        open_artifact(p, READABLE, what="artifact")
        if p.resolve() == out.resolve():
            raise UsageError(f"The report cannot be written into its own input '{p}'; choose another --out.")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda[:N], not '{device}'.")
    refs = input_refs({"artifacts": paths})
    builder = begin(
        out, "report", config, refs, options={"device": device}, force=force, dry_run=dry_run, version=ALGORITHM_VERSION
    )
    if dry_run:
        console.info(
            f"report: would {'skip' if builder.skipped else builder.action} '{out}' ({len(paths)} artifact(s) given)."
        )
        return {
            "out": str(out),
            "action": "skip" if builder.skipped else builder.action,
            "artifacts": [str(p) for p in paths],
        }
    if builder.skipped:
        console.info(f"report: '{out}' is up to date.")
        return builder.existing_artifact()

    doc, ctx = build_document(paths, config, device)
    figs = doc.figures()
    for f in figs:
        atomic_write_bytes(out / FIGURES / f"{f.name}.png", f.png)
    atomic_write_text(out / INDEX, html.render(doc))
    atomic_write_text(out / SUMMARY, markdown.render(doc))

    warnings = sum(isinstance(b, Note) and b.level == "warn" for s in doc.sections[1:] for b in s.blocks)
    builder.counts.update(
        {
            "artifacts": len(ctx.lineage.nodes),
            "given": len(paths),
            "variants": len(ctx.lineage.variants),
            "figures": len(figs),
            "warnings": int(warnings),
        }
    )
    builder.contents.update(
        {
            "index": INDEX,
            "summary": SUMMARY,
            "figures": [f"{FIGURES}/{f.name}.png" for f in figs],
            "sections": {s.id: ("left out" if s.empty else "shown") for s in doc.sections},
            "variants": [v.label for v in ctx.lineage.variants],
        }
    )
    builder.notes.extend(ctx.lineage.notes)
    files = [out / INDEX, out / SUMMARY, *[out / FIGURES / f"{f.name}.png" for f in figs]]
    artifact = builder.finish(hash_files(files, root=out))
    console.info(f"report: wrote {out / INDEX} ({len(figs)} figures, {warnings} warning(s)).")
    return artifact
