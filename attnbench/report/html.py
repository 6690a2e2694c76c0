"""report.html: one self-contained page. Images are embedded as base64 PNG data URIs and the
style sheet is inline, so it opens offline; there is no JavaScript. Links to the CSV and SVG
files are relative (they work beside the page, and are not needed to read it)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from attnbench.core.results import atomic_write_text
from attnbench.report.model import Chart, Section, Table

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1.5em; color: #1d1d1d; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0 1.4em; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f5f8; position: sticky; top: 0; } tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } .skipped { color: #8a5a00; background: #fff8e6;
  border-left: 3px solid #e0a800; padding: .3em .8em; } nav li { margin: .1em 0; }
td.agrees { color: #17692b; font-weight: 600; } td.differs { color: #8a5a00; font-weight: 600; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; } .gallery figure { max-width: 440px; }
"""


def _anchor(title: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in title.lower())


def table_html(t: Table, out: Path) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for _, h in t.columns)
    body = "".join("<tr>" + "".join(_td(k, r.get(k)) for k, _ in t.columns) + "</tr>" for r in t.rows)
    link = f' (<a href="{escape(t.csv.relative_to(out).as_posix())}">CSV</a>)' if t.csv else ""
    note = f"<p>{escape(t.note)}</p>" if t.note else ""
    return (f"<p><b>{escape(t.title)}</b>{link}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}")


def _td(key: str, value) -> str:
    text = "-" if value is None else str(value)
    cls = ""
    if key.endswith("verdict"):
        cls = ' class="agrees"' if text == "agrees" else ' class="differs"' if text.startswith("differs") else ""
    return f"<td{cls}>{escape(text)}</td>"


def figure_html(c: Chart, out: Path) -> str:
    data = base64.b64encode(c.png.read_bytes()).decode("ascii")
    svg = escape(c.svg.relative_to(out).as_posix())
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(c.caption)}">'
            f'<figcaption>{escape(c.caption)} (<a href="{svg}">SVG</a>)</figcaption></figure>')


def write_html(path: Path, title: str, sections: list[Section], out: Path) -> None:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style>"
             f"</head><body><h1>{escape(title)}</h1><nav><ul>"]
    parts += [f'<li><a href="#{_anchor(s.title)}">{escape(s.title)}</a></li>' for s in sections]
    parts.append("</ul></nav>")
    for s in sections:
        parts.append(f'<h2 id="{_anchor(s.title)}">{escape(s.title)}</h2>')
        parts += [f"<p>{_md_bold(escape(p))}</p>" for p in s.text]
        parts += [table_html(t, out) for t in s.tables]
        gallery = all(c.png.name.startswith("pattern-") for c in s.charts) and len(s.charts) > 1
        figs = "".join(figure_html(c, out) for c in s.charts)
        parts.append(f'<div class="gallery">{figs}</div>' if gallery else figs)
        parts += [f'<p class="skipped">Not drawn: {escape(n)}</p>' for n in s.skipped]
    parts.append("</body></html>\n")
    atomic_write_text(path, "\n".join(parts))


def _md_bold(text: str) -> str:
    """**x** -> <b>x</b> and *x* -> <i>x</i> in the section texts (already escaped)."""
    import re

    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\*(.+?)\*", r"<i>\1</i>", text)
