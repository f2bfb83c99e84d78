"""Render a :class:`Document` as Markdown (summary.md): the same sections, tables and notes, with figures
linked from figures/*.png instead of embedded."""

from __future__ import annotations

from cxrjepa.report.doc import (
    Block,
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

FIGURES_DIR = "figures"


def md_escape(text: object) -> str:
    """Text safe inside a Markdown table cell or paragraph (no accidental tables, links or HTML)."""
    s = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    for ch in ("<", ">", "[", "]", "*", "_", "`"):
        s = s.replace(ch, "\\" + ch)
    return s


def render(doc: Document) -> str:
    out = [f"# {md_escape(doc.title)}", "", md_escape(doc.subtitle), ""]
    out += ["Contents: " + " · ".join(f"[{md_escape(s.title)}](#{s.id})" for s in doc.sections), ""]
    for s in doc.sections:
        out += _section(s)
    if doc.footer:
        out += ["---", "", md_escape(doc.footer), ""]
    return "\n".join(out).rstrip() + "\n"


def _section(s: Section) -> list[str]:
    out = [f'<a id="{s.id}"></a>', "", f"## {md_escape(s.title)}", ""]
    if s.lead:
        out += [f"*{md_escape(s.lead)}*", ""]
    for b in s.blocks:
        out += block(b)
    return out


def _cell(c: Cell | str) -> str:
    if not isinstance(c, Cell):
        return md_escape(c)
    text = f"`{str(c.text).replace('`', '')}`" if c.code else md_escape(c.text)
    return f"**{text}**" if c.strong and text else text


def block(b: Block) -> list[str]:
    if isinstance(b, Heading):
        return [f"### {md_escape(b.text)}", ""]
    if isinstance(b, Para):
        return [md_escape(b.text), ""]
    if isinstance(b, Note):
        return [f"> **{'Warning' if b.level == 'warn' else 'Note'}:** {md_escape(b.text)}", ""]
    if isinstance(b, Table):
        if not b.columns:
            return []
        lines = [
            "| " + " | ".join(md_escape(c) for c in b.columns) + " |",
            "|" + "|".join("---:" if _numeric_column(b, i) else "---" for i in range(len(b.columns))) + "|",
        ]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in b.rows]
        if b.caption:
            lines += ["", f"*{md_escape(b.caption)}*"]
        return lines + [""]
    if isinstance(b, Figure):
        lines = [f"![{md_escape(b.alt)}]({FIGURES_DIR}/{b.name}.png)", ""]
        if b.caption:
            lines += [f"*{md_escape(b.caption)}*", ""]
        return lines
    if isinstance(b, Cards):
        return [
            " · ".join(
                f"**{md_escape(c.value)}** {md_escape(c.label)}" + (f" ({md_escape(c.sub)})" if c.sub else "")
                for c in b.items
            ),
            "",
        ]
    if isinstance(b, Tree):
        return [*_tree(b.items, 0), ""]
    if isinstance(b, Details):
        out = ["<details>", f"<summary>{md_escape(b.summary)}</summary>", ""]
        for x in b.blocks:
            out += block(x)
        return out + ["</details>", ""]
    if isinstance(b, Code):
        return ["```", b.text.replace("```", "'''"), "```", ""]
    raise TypeError(f"unknown block {type(b).__name__}")


def _numeric_column(t: Table, i: int) -> bool:
    cells = [r[i] for r in t.rows if i < len(r)]
    return bool(cells) and all(isinstance(c, Cell) and c.numeric for c in cells)


def _tree(items: list[TreeItem], depth: int) -> list[str]:
    out = []
    for i in items:
        mark = {"missing": " (missing)", "changed": " (changed)"}.get(i.status, "")
        out.append(f"{'  ' * depth}- **{md_escape(i.kind)}** {md_escape(i.label)}{mark} — {md_escape(i.detail)}")
        out += _tree(i.children, depth + 1)
    return out
