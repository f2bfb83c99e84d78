"""Provenance: which artifacts went into the report, how they connect, and what made each of them."""

from __future__ import annotations

from collections import defaultdict

from cxrjepa.core.config import dump_yaml
from cxrjepa.report.doc import Cell, Code, Details, Heading, Note, Section, Table, Tree, TreeItem, human_int, short_fp
from cxrjepa.report.lineage import Node
from cxrjepa.report.sections.base import Context

#: packages whose versions matter most for reproducing a result, listed first
KEY_PACKAGES = ("torch", "timm", "numpy", "zarr", "pydicom", "scikit-learn", "safetensors")


def build(ctx: Context) -> Section:
    lin = ctx.lineage
    sec = Section(
        "provenance",
        "Provenance",
        lead="The artifacts behind this report, how they connect, and what produced each of them.",
    )
    for text in lin.notes:
        sec.note(text, "warn")
    shown: set[int] = set()
    sec.add(Heading("Lineage"), Tree([_tree(n, shown) for n in lin.roots]))
    sec.add(Heading("Artifacts"), _artifact_table(lin.nodes))
    sec.add(*_versions(lin.nodes))
    sec.add(Details("Commands and paths", [_commands(lin.nodes)]))
    settings = []
    for node in lin.nodes:
        params = node.manifest.get("params")
        if params:
            settings += [Heading(f"{node.kind} {node.name}"), Code(dump_yaml(params).rstrip())]
    if settings:
        sec.add(Details(f"Settings of each artifact ({len(settings) // 2})", settings))
    return sec


def _tree(node: Node, shown: set[int]) -> TreeItem:
    """The node and its inputs; a node already shown elsewhere in the tree is named, not repeated."""
    m = node.manifest
    bits = [
        f"created {str(m.get('created') or '–')[:16].replace('T', ' ')}",
        f"fingerprint {short_fp(node.artifact.content_fingerprint)}",
    ]
    counts = node.artifact.counts
    if counts.get("samples") is not None:
        bits.insert(0, f"{human_int(counts['samples'])} samples")
    item = TreeItem(node.kind, node.name, " · ".join(bits))
    if id(node) in shown:
        item.detail = "(see above)"
        return item
    shown.add(id(node))
    for edge in node.inputs:
        if edge.node is not None:
            child = _tree(edge.node, shown)
            if edge.status == "changed":
                child.status = "changed"
                child.detail += " · changed since it was used"
            item.children.append(child)
        elif edge.status == "raw":
            item.children.append(TreeItem("raw", edge.name, f"fingerprint {short_fp(edge.fingerprint)}", "raw"))
        else:
            item.children.append(TreeItem(edge.kind, edge.recorded_path, f"{edge.reason}: left out", "missing"))
    return item


def _devices(m: dict) -> str:
    dev = (m.get("producer") or {}).get("devices") or {}
    gpus = dev.get("gpus") or []
    cpu = f"{dev.get('cpus', '?')} CPU"
    if gpus:
        names = defaultdict(int)
        for g in gpus:
            names[str(g)] += 1
        return cpu + ", " + ", ".join(f"{n}× {g}" for g, n in names.items())
    return cpu


def _artifact_table(nodes: list[Node]) -> Table:
    rows = []
    for n in nodes:
        m = n.manifest
        prod = m.get("producer") or {}
        dur = m.get("duration_s")
        rows.append(
            [
                Cell(n.kind),
                Cell(n.name, strong=n.given, title=str(n.path)),
                Cell(str(m.get("finished") or m.get("created") or "–")[:19].replace("T", " ")),
                Cell(_duration(dur), numeric=True),
                Cell(short_fp(n.artifact.content_fingerprint), code=True, title=str(n.artifact.content_fingerprint)),
                Cell(str(prod.get("cxrjepa", "–"))),
                Cell(str(prod.get("host", "–"))),
                Cell(_devices(m)),
            ]
        )
    return Table(
        ["Kind", "Artifact", "Finished (UTC)", "Took", "Content fingerprint", "cxrjepa", "Host", "Devices"],
        rows,
        caption="Bold: given on the command line; the others were found through their manifests' inputs.",
    )


def _duration(seconds) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _versions(nodes: list[Node]) -> list:
    seen: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    pythons: dict[str, list[str]] = defaultdict(list)
    for n in nodes:
        prod = n.manifest.get("producer") or {}
        for pkg, ver in (prod.get("packages") or {}).items():
            seen[pkg][str(ver)].append(n.name)
        if prod.get("python"):
            pythons[str(prod["python"])].append(n.name)
    if not seen and not pythons:
        return []
    rows = []
    differs = []
    entries = [("python", pythons)] + sorted(seen.items(), key=lambda kv: (kv[0] not in KEY_PACKAGES, kv[0].lower()))
    for pkg, versions in entries:
        if len(versions) == 1:
            text = next(iter(versions))
        else:
            text = "; ".join(f"{v} ({', '.join(names)})" for v, names in versions.items())
            differs.append(pkg)
        rows.append([Cell(pkg), Cell(text, strong=len(versions) > 1)])
    table = Table(
        ["Package", "Version"],
        rows,
        caption="Versions recorded in the manifests; where artifacts were made with different versions, each is listed.",
    )
    out: list = []
    if differs:
        out.append(Note(f"Artifacts in this chain were made with different versions of {', '.join(differs)}.", "info"))
    key = {pkg: next(iter(v)) if len(v) == 1 else "several" for pkg, v in entries if pkg in ("python", "torch", "timm")}
    brief = ", ".join(f"{k} {v}" for k, v in key.items())
    out.append(Details(f"Software versions ({len(rows)} packages{': ' + brief if brief else ''})", [table]))
    return out


def _commands(nodes: list[Node]) -> Table:
    rows = [
        [
            Cell(n.name),
            Cell(str(n.path), code=True),
            Cell(str((n.manifest.get("producer") or {}).get("command", "–")), code=True),
        ]
        for n in nodes
    ]
    return Table(["Artifact", "Path", "Command"], rows)
