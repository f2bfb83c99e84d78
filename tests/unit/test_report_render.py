"""HTML and Markdown rendering: escaped text, inline images only, sound structure."""

from __future__ import annotations

import base64

from cxrjepa.report import html, markdown
from cxrjepa.report.doc import (
    Card,
    Cards,
    Cell,
    Code,
    Details,
    Document,
    Figure,
    Heading,
    Note,
    Para,
    Section,
    Table,
    Tree,
    TreeItem,
)
from tests.report_chain import inspect_html

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _doc() -> Document:
    evil = '<script>alert(1)</script> "quoted" & https://example.org/x.png | pipe'
    s1 = Section("one", "First", lead=evil)
    s1.add(
        Heading("Sub"),
        Para(evil),
        Note(evil, "warn"),
        Note("plain"),
        Table(
            ["A", "B"],
            [[Cell(evil, strong=True, swatch="#123456", title=evil), Cell("1.0", numeric=True)]],
            caption=evil,
        ),
        Figure("fig-a", PNG, alt=evil, caption=evil),
        Cards([Card("samples", "12", evil)]),
        Tree([TreeItem("probe", evil, evil, children=[TreeItem("run", "r", "", "missing")])]),
        Details("more", [Code(evil), Figure("fig-b", PNG, alt="second")]),
    )
    s2 = Section("two", "Second")
    s2.note("Left out: nothing to show.")
    return Document("Title <b>", evil, [s1, s2], footer=evil)


def test_html_escapes_every_text_and_loads_nothing_external():
    page = html.render(_doc())
    facts = inspect_html(page)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert facts.external == []
    assert facts.h1 == 1
    assert len(facts.imgs) == 2 and all(i["alt"].strip() for i in facts.imgs)
    assert all(i["src"].startswith("data:image/png;base64,") for i in facts.imgs)
    assert base64.b64decode(facts.imgs[0]["src"].split(",", 1)[1]) == PNG
    csp = [a for t, a in facts.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    assert {"one", "two"} <= facts.ids
    # the table of contents links to every section, and marks the one left out
    hrefs = [a["href"] for t, a in facts.tags if t == "a"]
    assert hrefs == ["#one", "#two"]
    assert any(t == "a" and a.get("class") == "off" and a["href"] == "#two" for t, a in facts.tags)


def test_markdown_has_the_same_sections_and_links_figures_from_the_folder():
    md = markdown.render(_doc())
    assert md.startswith("# Title \\<b\\>")
    assert "## First" in md and "## Second" in md and "### Sub" in md
    assert "(figures/fig-a.png)" in md and "(figures/fig-b.png)" in md
    outside_code = md.split("```")[::2]  # fenced blocks show text literally
    assert not any("<script>" in part for part in outside_code)
    # a pipe in a cell does not break the table
    row = next(line for line in md.splitlines() if line.startswith("| **"))
    assert row.count(" | ") == 1
    assert "> **Warning:**" in md and "> **Note:** Left out" in md


def test_a_section_with_only_notes_counts_as_empty():
    s = Section("x", "X")
    s.note("Left out")
    assert s.empty
    s.add(Para("something"))
    assert not s.empty
