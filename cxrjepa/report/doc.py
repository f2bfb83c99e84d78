"""The report as a small document model, rendered twice: to HTML (html.py) and to Markdown (markdown.py).

Sections build these blocks from artifacts; they never write HTML or Markdown themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class Cell:
    """A table cell: text, optionally emphasised, right-aligned when numeric, with a hover title."""

    text: str
    strong: bool = False
    numeric: bool = False
    title: str = ""
    code: bool = False
    #: a colour dot before the text (the run's colour in the figures)
    swatch: str = ""


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell | str]]
    caption: str = ""

    def without_empty_columns(self, keep: int = 1) -> Table:
        """The table without columns (after the first ``keep``) in which no row has a value."""

        def text(c):
            return c.text if isinstance(c, Cell) else str(c)

        cols = [
            i
            for i in range(len(self.columns))
            if i < keep or any(i < len(r) and text(r[i]) not in ("", "–") for r in self.rows)
        ]
        return Table(
            [self.columns[i] for i in cols], [[r[i] for i in cols if i < len(r)] for r in self.rows], self.caption
        )


@dataclass
class Figure:
    """A PNG figure: ``name`` is its file stem in figures/; ``alt`` describes it for people who cannot see it."""

    name: str
    png: bytes
    alt: str
    caption: str = ""


@dataclass
class Note:
    """A remark: ``info`` (a part left out, a sampling note) or ``warn`` (collapse, a changed input)."""

    text: str
    level: Literal["info", "warn"] = "info"


@dataclass
class Para:
    text: str


@dataclass
class Code:
    """Preformatted text (settings as YAML, a command line)."""

    text: str


@dataclass
class Heading:
    """A sub-heading inside a section (h3)."""

    text: str


@dataclass
class Card:
    label: str
    value: str
    sub: str = ""


@dataclass
class Cards:
    items: list[Card]


@dataclass
class TreeItem:
    """One line of a tree (the lineage): a kind badge, a label, details, children."""

    kind: str
    label: str
    detail: str = ""
    status: Literal["ok", "missing", "changed", "raw"] = "ok"
    children: list[TreeItem] = field(default_factory=list)


@dataclass
class Tree:
    items: list[TreeItem]


@dataclass
class Details:
    """A collapsible group of blocks (long tables a reader opens when needed)."""

    summary: str
    blocks: list[Block]


Block = Table | Figure | Note | Para | Heading | Cards | Tree | Details | Code


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    #: a one-line description shown under the title
    lead: str = ""

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self

    def note(self, text: str, level: Literal["info", "warn"] = "info") -> Section:
        self.blocks.append(Note(text, level))
        return self

    def figures(self) -> list[Figure]:
        return list(iter_figures(self.blocks))

    @property
    def empty(self) -> bool:
        """True when the section holds only notes and headings (its inputs were missing)."""
        return all(isinstance(b, (Note, Heading)) for b in self.blocks)


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]
    footer: str = ""

    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures()]


def iter_figures(blocks: list[Block]):
    for b in blocks:
        if isinstance(b, Figure):
            yield b
        elif isinstance(b, Details):
            yield from iter_figures(b.blocks)


def num(value: float | None, digits: int = 3) -> str:
    """A metric value for a table: fixed decimals, an en dash when missing or not a number."""
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if v != v or v in (float("inf"), float("-inf")):
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def is_best(value: float | None, best: float | None, digits: int = 3) -> bool:
    """Whether ``value`` ties the best value as a reader sees them (at the shown precision)."""
    if value is None or best is None:
        return False
    return round(float(value), digits) == round(float(best), digits)


def human_int(value) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "–"


def short_fp(fp: str | None) -> str:
    """``sha256:0123456789ab…`` -> ``0123456789ab`` (enough to tell artifacts apart)."""
    if not fp:
        return "–"
    return str(fp).split(":", 1)[-1][:12]
