"""report.html: one self-contained page rendered from templates/report.html.j2 (jinja2, autoescaped).

Charts are inline SVG that scale with the page (text stays text, so a browser can measure it);
the style sheet and a few lines of vanilla JavaScript that sort the tables are inline; there is no
CDN, no external request, and the page opens offline. Links to the CSV, SVG and PNG files are
relative (they work beside the page and are not needed to read it).
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from attnbench.core.results import atomic_write_text
from attnbench.report.model import Chart, Section, Table

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("attnbench.report", "templates"),
                          autoescape=True, keep_trailing_newline=True)


def _anchor(title: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in title.lower())


def _md(text: str) -> Markup:
    """**x** -> <b>x</b> and *x* -> <i>x</i> in the section texts (escaped first)."""
    t = str(escape(text))
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return Markup(re.sub(r"\*(.+?)\*", r"<i>\1</i>", t))


_ENV.filters["md"] = _md


def _cell(key: str, value) -> tuple[str, str]:
    text = "-" if value is None else str(value)
    cls = ""
    if key.endswith("verdict"):
        cls = "agrees" if text == "agrees" else "differs" if text.startswith("differs") else ""
    return cls, text


def _table(t: Table, out: Path) -> dict:
    return {"title": t.title, "csv": t.csv.relative_to(out).as_posix() if t.csv else None, "note": t.note,
            "heads": [h for _, h in t.columns], "rows": [[_cell(k, r.get(k)) for k, _ in t.columns] for r in t.rows]}


def inline_svg(path: Path, prefix: str) -> Markup:
    """The SVG file as an element for the page: no XML prologue, width 100 % (viewBox kept), and
    every id prefixed so charts on one page never share an id."""
    text = path.read_text(encoding="utf-8")
    text = text[text.index("<svg"):]
    head_end = text.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", text[:head_end])
    text = head + ' preserveAspectRatio="xMinYMin meet"' + text[head_end:]
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r'url\(#([^)]+)\)', rf'url(#{prefix}-\1)', text)
    text = re.sub(r'(xlink:)?href="#([^"]+)"', rf'\1href="#{prefix}-\2"', text)
    return Markup(text)


def _chart(c: Chart, out: Path, n: int) -> dict:
    return {"caption": c.caption, "how": c.how, "svg": inline_svg(c.svg, f"c{n}"),
            "svg_href": c.svg.relative_to(out).as_posix(), "png_href": c.png.relative_to(out).as_posix()}


def write_html(path: Path, title: str, sections: list[Section], out: Path) -> None:
    n = 0
    secs = []
    for s in sections:
        charts = []
        for c in s.charts:
            n += 1
            charts.append(_chart(c, out, n))
        gallery = all(c.png.name.startswith("pattern-") for c in s.charts) and len(s.charts) > 1
        secs.append({"title": s.title, "anchor": _anchor(s.title), "text": s.text, "charts": charts,
                     "tables": [_table(t, out) for t in s.tables], "skipped": s.skipped, "gallery": gallery,
                     "lead": s.lead})
    atomic_write_text(path, _ENV.get_template("report.html.j2").render(title=title, sections=secs))
