"""Render a :class:`Document` as one self-contained HTML page.

Everything is inline: the CSS in a <style> element, the figures as base64 ``data:`` URIs. A
Content-Security-Policy forbids the page from loading anything else, so it opens from disk, offline,
and cannot leak anything to the network. Every piece of text is escaped.
"""

from __future__ import annotations

import base64
import re
from html import escape

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

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

CSS = """
:root{--fg:#1f2933;--muted:#616e7c;--bg:#f4f6f8;--card:#fff;--line:#e4e7eb;--accent:#2358c4;
--info:#eaf1fb;--info-line:#7aa0d8;--warn:#fff6e0;--warn-line:#e0a526;--ok:#2f855a;--bad:#c53030}
*{box-sizing:border-box}
html{scroll-behavior:smooth}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;-webkit-font-smoothing:antialiased}
.layout{display:grid;grid-template-columns:230px minmax(0,1fr);max-width:1360px;margin:0 auto}
nav.toc{position:sticky;top:0;align-self:start;max-height:100vh;overflow:auto;padding:28px 14px 28px 22px}
nav.toc .brand{font-weight:700;letter-spacing:.02em;color:var(--accent);margin-bottom:14px;font-size:14px}
nav.toc ol{list-style:none;margin:0;padding:0}
nav.toc li{margin:2px 0}
nav.toc a{display:block;padding:5px 10px;border-radius:6px;color:var(--fg);text-decoration:none;font-size:14px}
nav.toc a:hover{background:#e3e8ef}
nav.toc a.off{color:var(--muted)}
main{padding:28px 32px 64px;min-width:0}
header.top{margin:0 0 8px}
h1{font-size:28px;line-height:1.2;margin:0 0 6px;letter-spacing:-.01em}
.subtitle{color:var(--muted);margin:0}
section.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:22px 26px 20px;margin:22px 0;
box-shadow:0 1px 2px rgba(16,24,40,.04)}
h2{font-size:21px;margin:0 0 4px}
h3{font-size:16px;margin:24px 0 8px;padding-top:10px;border-top:1px solid var(--line)}
h2+.lead+h3,h2+h3{border-top:none;padding-top:0}
.lead{color:var(--muted);margin:0 0 14px}
p{margin:8px 0}
.note{border-left:4px solid var(--info-line);background:var(--info);padding:8px 12px;border-radius:6px;margin:10px 0;font-size:14px}
.note.warn{border-left-color:var(--warn-line);background:var(--warn)}
.note .tag{font-weight:600;margin-right:6px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px;margin:10px 0 16px}
.kpi{border:1px solid var(--line);border-radius:10px;padding:12px 14px;background:#fafbfc}
.kpi .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.kpi .value{font-size:24px;font-weight:650;margin-top:2px;font-variant-numeric:tabular-nums}
.kpi .sub{color:var(--muted);font-size:12.5px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.table-wrap{overflow-x:auto;margin:10px 0 4px;border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%;font-size:13.5px}
thead th{background:#f7f9fb;font-weight:600;color:#3e4c59;text-align:left;white-space:nowrap}
th,td{padding:7px 11px;border-bottom:1px solid var(--line);vertical-align:top}
tbody tr:last-child td{border-bottom:none}
tbody tr:hover td{background:#f9fbfd}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.nw{white-space:nowrap}
td code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
td code{background:#f1f3f5;padding:1px 5px;border-radius:4px;word-break:break-all}
.caption,figcaption{color:var(--muted);font-size:13px;margin:6px 2px 12px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:7px;vertical-align:baseline}
figure{margin:14px 0 18px}
figure img{display:block;max-width:100%;height:auto;border:1px solid var(--line);border-radius:8px;background:#fff;padding:6px}
details{margin:10px 0;border:1px solid var(--line);border-radius:8px;padding:8px 12px;background:#fcfcfd}
details>summary{cursor:pointer;font-weight:600;color:#3e4c59}
details[open]>summary{margin-bottom:6px}
details h3{font-size:14px;margin:14px 0 4px;padding-top:8px}
pre{background:#f6f8fa;border-radius:6px;padding:10px 12px;overflow:auto;max-height:420px;margin:6px 0}
ul.tree,ul.tree ul{list-style:none;margin:0;padding-left:22px}
ul.tree{padding-left:0;margin:8px 0 12px}
ul.tree li{position:relative;margin:5px 0}
ul.tree ul li::before{content:"";position:absolute;left:-14px;top:-6px;width:10px;height:18px;border-left:1px solid #cbd2d9;border-bottom:1px solid #cbd2d9}
.badge{display:inline-block;font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.04em;padding:1px 7px;
border-radius:999px;margin-right:6px;background:#e4e7eb;color:#3e4c59}
.badge.dataset{background:#e3f2e8;color:#276749}.badge.run{background:#e6edfb;color:#234e9c}
.badge.embeddings{background:#f3e8fb;color:#6b2c91}.badge.probe{background:#fdeede;color:#9c4221}
.badge.demo{background:#eef0f2}.badge.raw{background:#f1f3f5;color:#7b8794}
.tree .detail{color:var(--muted);font-size:13px;margin-left:6px}
.tree .missing .name{color:var(--bad);text-decoration:line-through}
.tree .changed .name{color:#b7791f}
footer{color:var(--muted);font-size:12.5px;margin-top:28px}
@media (max-width:960px){.layout{grid-template-columns:1fr}nav.toc{display:none}main{padding:18px 14px 48px}
section.card{padding:16px}}
@media print{nav.toc{display:none}.layout{display:block}section.card{break-inside:avoid-page;box-shadow:none}body{background:#fff}}
"""


def e(text: object) -> str:
    return escape(str(text), quote=True)


_SCHEME = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*):(?=//)")


def a(text: object) -> str:
    """An attribute value (alt, title): escaped, and any URL in it defanged (``https[:]//host``).

    Attributes of this page never point anywhere; a URL quoted in a tooltip must not look like one to a
    browser, a proxy or a scanner.
    """
    return e(_SCHEME.sub(r"\1[:]", str(text)))


def render(doc: Document) -> str:
    off = ' class="off"'
    nav = "".join(f'<li><a href="#{e(s.id)}"{off if s.empty else ""}>{e(s.title)}</a></li>' for s in doc.sections)
    body = "\n".join(_section(s) for s in doc.sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="generator" content="cxrjepa report">
<title>{e(doc.title)}</title>
<style>{CSS}</style>
</head>
<body>
<div class="layout">
<nav class="toc" aria-label="Sections"><div class="brand">cxrjepa</div><ol>{nav}</ol></nav>
<main>
<header class="top"><h1>{e(doc.title)}</h1><p class="subtitle">{e(doc.subtitle)}</p></header>
{body}
<footer>{e(doc.footer)}</footer>
</main>
</div>
</body>
</html>
"""


def _section(s: Section) -> str:
    lead = f'<p class="lead">{e(s.lead)}</p>' if s.lead else ""
    blocks = "\n".join(block(b) for b in s.blocks)
    return f'<section class="card" id="{e(s.id)}" aria-labelledby="{e(s.id)}-title">\n<h2 id="{e(s.id)}-title">{e(s.title)}</h2>{lead}\n{blocks}\n</section>'


def block(b: Block) -> str:
    if isinstance(b, Heading):
        return f"<h3>{e(b.text)}</h3>"
    if isinstance(b, Para):
        return f"<p>{e(b.text)}</p>"
    if isinstance(b, Note):
        tag = "Warning" if b.level == "warn" else "Note"
        role = ' role="alert"' if b.level == "warn" else ""
        return f'<div class="note {e(b.level)}"{role}><span class="tag">{tag}:</span>{e(b.text)}</div>'
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        return _figure(b)
    if isinstance(b, Cards):
        items = "".join(
            f'<div class="kpi"><div class="label">{e(c.label)}</div><div class="value">{e(c.value)}</div>'
            f'<div class="sub" title="{a(c.sub)}">{e(c.sub) or "&nbsp;"}</div></div>'
            for c in b.items
        )
        return f'<div class="cards">{items}</div>'
    if isinstance(b, Tree):
        return f'<ul class="tree">{"".join(_tree_item(i) for i in b.items)}</ul>'
    if isinstance(b, Details):
        return f"<details><summary>{e(b.summary)}</summary>{''.join(block(x) for x in b.blocks)}</details>"
    if isinstance(b, Code):
        return f"<pre>{e(b.text)}</pre>"
    raise TypeError(f"unknown block {type(b).__name__}")


def _cell(c: Cell | str, tag: str = "td") -> str:
    if not isinstance(c, Cell):
        c = Cell(str(c))
    inner = e(c.text)
    if c.code:
        inner = f"<code>{inner}</code>"
    if c.strong:
        inner = f"<strong>{inner}</strong>"
    if c.swatch:
        inner = f'<span class="swatch" style="background:{e(c.swatch)}" aria-hidden="true"></span>{inner}'
    classes = (["num"] if c.numeric else []) + (["nw"] if len(c.text) <= 28 else [])
    attrs = f' class="{" ".join(classes)}"' if classes else ""
    if c.title:
        attrs += f' title="{a(c.title)}"'
    return f"<{tag}{attrs}>{inner}</{tag}>"


def _table(t: Table) -> str:
    numeric = [
        bool(t.rows) and all(isinstance(r[i], Cell) and r[i].numeric for r in t.rows if i < len(r))
        for i in range(len(t.columns))
    ]
    num_cls = ' class="num"'
    head = "".join(f'<th scope="col"{num_cls if n else ""}>{e(c)}</th>' for c, n in zip(t.columns, numeric))
    rows = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in t.rows)
    cap = f'<p class="caption">{e(t.caption)}</p>' if t.caption else ""
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>{cap}'


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(f: Figure) -> str:
    cap = f"<figcaption>{e(f.caption)}</figcaption>" if f.caption else ""
    return f'<figure id="fig-{e(f.name)}"><img src="{data_uri(f.png)}" alt="{a(f.alt)}">{cap}</figure>'


def _tree_item(i: TreeItem) -> str:
    kids = f"<ul>{''.join(_tree_item(c) for c in i.children)}</ul>" if i.children else ""
    return (
        f'<li class="{e(i.status)}"><span class="badge {e(i.kind)}">{e(i.kind)}</span>'
        f'<span class="name">{e(i.label)}</span><span class="detail">{e(i.detail)}</span>{kids}</li>'
    )
