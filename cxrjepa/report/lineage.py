"""Find the artifacts behind the ones a user gave, by following each manifest's ``inputs``.

``collect([PROBE])`` opens the probe, then its embeddings, their run and dataset, and so on up the chain.
An upstream artifact that cannot be found (moved, deleted, partial) becomes a note, never an error: the
sections that need it are left out. Artifacts are then grouped into **variants** (one per pretraining
run, or per embeddings without a run) so several runs and their probes can be shown side by side.

Sections read an artifact through its kind's reader (:attr:`Node.as_dataset`, ``as_run``, ``as_embeddings``,
``as_probe``: the layouts the stages write with), which checks its manifest on first use; an artifact that does
not match is a :class:`cxrjepa.core.schema.SchemaError` naming the field and the stage to rerun, and stops the
report (it is never turned into a warning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from cxrjepa.core.artifact import COMPLETE, Artifact, open_artifact, read_manifest
from cxrjepa.core.errors import ArtifactError

if TYPE_CHECKING:
    from cxrjepa.data.store import DatasetArtifact
    from cxrjepa.embed.store import Embeddings
    from cxrjepa.pretrain.layout import Run
    from cxrjepa.probe.layout import Probe

#: kinds the report reads (a report of reports is refused)
READABLE = ("demo", "dataset", "run", "embeddings", "probe")
#: Matplotlib's colour-blind-friendlier cycle (tab10), one colour per variant, the same in every figure
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class Edge:
    """An input recorded in a manifest, and what became of it."""

    name: str
    recorded_path: str
    kind: str
    fingerprint: str
    node: Node | None = None
    #: ok | changed (found, but its content differs from what was used) | missing | raw (not an artifact)
    status: str = "ok"
    reason: str = ""


@dataclass
class Node:
    artifact: Artifact
    given: bool = False
    inputs: list[Edge] = field(default_factory=list)
    name: str = ""

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def kind(self) -> str:
        return self.artifact.kind

    @property
    def manifest(self) -> dict:
        return self.artifact.manifest

    def _kind(self, kind: str) -> None:
        if self.kind != kind:
            raise ArtifactError(f"'{self.path}' is a {self.kind} artifact, not a {kind}.")

    @cached_property
    def as_dataset(self) -> DatasetArtifact:
        """The dataset reader (manifest checked against data/layout.py)."""
        from cxrjepa.data.store import DatasetArtifact

        self._kind("dataset")
        return DatasetArtifact(self.artifact)

    @cached_property
    def as_run(self) -> Run:
        """The run reader (manifest checked against pretrain/layout.py)."""
        from cxrjepa.pretrain.layout import Run

        return Run(self.artifact)

    @cached_property
    def as_embeddings(self) -> Embeddings:
        """The embeddings reader (manifest checked against embed/store.py)."""
        from cxrjepa.embed.store import Embeddings

        self._kind("embeddings")
        return Embeddings(self.artifact)

    @cached_property
    def as_probe(self) -> Probe:
        """The probe reader (manifest and metrics.json checked against probe/layout.py)."""
        from cxrjepa.probe.layout import Probe

        return Probe(self.artifact)

    def upstream(self, kind: str) -> Node | None:
        """The nearest ancestor of ``kind`` (breadth first)."""
        seen: set[int] = set()
        frontier = [self]
        while frontier:
            nxt = []
            for node in frontier:
                for edge in node.inputs:
                    if edge.node is None or id(edge.node) in seen:
                        continue
                    if edge.node.kind == kind:
                        return edge.node
                    seen.add(id(edge.node))
                    nxt.append(edge.node)
            frontier = nxt
        return None


@dataclass
class Variant:
    """One column of the side-by-side views: a run (or embeddings without a run) and what was made from it."""

    key: str
    label: str
    color: str
    run: Node | None = None
    dataset: Node | None = None
    embeddings: list[Node] = field(default_factory=list)
    probes: list[Node] = field(default_factory=list)


@dataclass
class Lineage:
    nodes: list[Node]
    variants: list[Variant]
    notes: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Node]:
        return [n for n in self.nodes if n.kind == kind]

    @property
    def roots(self) -> list[Node]:
        """Nodes that no other node uses as an input (where the lineage tree starts)."""
        used = {id(e.node) for n in self.nodes for e in n.inputs if e.node is not None}
        return [n for n in self.nodes if id(n) not in used]

    def datasets(self) -> list[Node]:
        return self.of_kind("dataset")


def _key(path: Path) -> str:
    try:
        return str(path.resolve())
    except OSError:
        return str(path.absolute())


def _candidates(recorded: str, referrer: Path) -> list[tuple[Path, bool]]:
    """Where an input recorded as ``recorded`` may be now; the flag says a fingerprint match is required."""
    p = Path(recorded)
    out: list[tuple[Path, bool]] = [(p, False)]
    if not p.is_absolute():
        out.append((referrer.parent / p, False))
    # the chain moved as a whole (copied to another disk): look for a sibling of the same name
    out.append((referrer.parent / p.name, True))
    return out


def _locate(edge: Edge, referrer: Path) -> tuple[Path | None, dict | None, str]:
    """Find the folder of ``edge``; returns (path, manifest, status)."""
    partial = None
    for cand, need_match in _candidates(edge.recorded_path, referrer):
        if not cand.is_dir():
            continue
        try:
            manifest = read_manifest(cand)
        except ArtifactError:
            continue
        if manifest is None:
            continue
        if manifest.get("status") != COMPLETE:
            partial = cand
            continue
        content = manifest.get("content_fingerprint") or manifest.get("fingerprint")
        matches = not edge.fingerprint or content == edge.fingerprint
        if need_match and not matches:
            continue
        return cand, manifest, "ok" if matches else "changed"
    if partial is not None:
        return partial, None, "partial"
    return None, None, "missing"


def collect(paths: list[str | Path]) -> Lineage:
    """Open the given artifacts and everything upstream of them."""
    nodes: dict[str, Node] = {}
    order: list[Node] = []
    notes: list[str] = []

    def visit(path: Path, manifest: dict, given: bool) -> Node:
        key = _key(path)
        if key in nodes:
            nodes[key].given |= given
            return nodes[key]
        node = Node(Artifact(path, manifest), given=given)
        nodes[key] = node
        order.append(node)
        for ref in manifest.get("inputs") or []:
            if not isinstance(ref, dict):
                continue
            edge = Edge(
                name=str(ref.get("name", "")),
                recorded_path=str(ref.get("path", "")),
                kind=str(ref.get("kind", "")),
                fingerprint=str(ref.get("fingerprint") or ""),
            )
            node.inputs.append(edge)
            if edge.kind == "raw" or edge.kind not in READABLE:
                edge.status = "raw"
                continue
            found, up_manifest, status = _locate(edge, path)
            if up_manifest is None:
                edge.status = "missing"
                edge.reason = "incomplete" if status == "partial" else "not found"
                notes.append(
                    f"The {edge.kind} '{edge.recorded_path}' used by {node.kind} '{path.name}' was "
                    f"{'left incomplete' if status == 'partial' else 'not found'}; parts that need it are left out."
                )
                continue
            edge.status = status
            if status == "changed":
                notes.append(
                    f"The {edge.kind} '{found}' has changed since {node.kind} '{path.name}' was made from it "
                    "(its content fingerprint differs); figures drawn from it may not match."
                )
            edge.node = visit(found, up_manifest, False)
        return node

    for p in paths:
        art = open_artifact(p, READABLE, what="artifact")
        visit(art.path, art.manifest, True)

    _name_nodes(order)
    return Lineage(order, _variants(order), notes)


def _name_nodes(nodes: list[Node]) -> None:
    """Folder names, widened with their parent folder where two artifacts share a name."""
    for node in nodes:
        node.name = node.path.name or str(node.path)
    seen: dict[str, list[Node]] = {}
    for node in nodes:
        seen.setdefault(node.name, []).append(node)
    for group in seen.values():
        if len(group) > 1:
            for node in group:
                node.name = f"{node.path.parent.name}/{node.path.name}"


def _variants(nodes: list[Node]) -> list[Variant]:
    variants: dict[str, Variant] = {}

    def get(anchor: Node) -> Variant:
        key = _key(anchor.path)
        if key not in variants:
            color = PALETTE[len(variants) % len(PALETTE)]
            variants[key] = Variant(key=key, label=anchor.name, color=color)
            if anchor.kind == "run":
                variants[key].run = anchor
                variants[key].dataset = anchor.upstream("dataset")
        return variants[key]

    # the order people gave them in: probes first map back to their runs
    for node in nodes:
        if node.kind == "run":
            get(node)
    for node in nodes:
        if node.kind == "embeddings":
            run = node.upstream("run")
            v = get(run if run is not None else node)
            if node not in v.embeddings:
                v.embeddings.append(node)
            if v.dataset is None:
                v.dataset = node.upstream("dataset")
    for node in nodes:
        if node.kind == "probe":
            emb = node.upstream("embeddings")
            run = node.upstream("run")
            anchor = run or emb or node
            v = get(anchor)
            v.probes.append(node)
            if emb is not None and emb not in v.embeddings:
                v.embeddings.append(emb)
            if v.dataset is None:
                v.dataset = node.upstream("dataset")
    ordered = _order_variants(list(variants.values()), nodes)
    for i, v in enumerate(ordered):
        v.color = PALETTE[i % len(PALETTE)]
    return ordered


def _order_variants(variants: list[Variant], nodes: list[Node]) -> list[Variant]:
    """Variants in the order their artifacts were given on the command line."""
    rank: dict[int, int] = {id(n): i for i, n in enumerate(nodes)}

    def first(v: Variant) -> int:
        members = [m for m in [v.run, *v.embeddings, *v.probes] if m is not None]
        given = [rank[id(m)] for m in members if m.given]
        return min(given) if given else min((rank[id(m)] for m in members), default=0) + len(nodes)

    return sorted(variants, key=first)
