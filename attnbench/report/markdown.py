"""report.md: the sections as Markdown, charts linked as relative PNG paths (with their SVG). The
opening section (`lead`) comes before the contents, its findings as a list."""

from __future__ import annotations

from pathlib import Path

from attnbench.core.results import atomic_write_text
from attnbench.report.model import Section, Table


def cell(v) -> str:
    return str("-" if v is None else v).replace("|", "\\|").replace("\n", " ")


def table_md(t: Table, out: Path) -> list[str]:
    lines = [f"**{t.title}**" + (f" ([CSV]({t.csv.relative_to(out).as_posix()}))" if t.csv else ""), ""]
    lines.append("| " + " | ".join(h for _, h in t.columns) + " |")
    lines.append("|" + "---|" * len(t.columns))
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in t.columns) + " |" for r in t.rows]
    return lines + (["", t.note] if t.note else []) + [""]


def write_markdown(path: Path, title: str, sections: list[Section], out: Path) -> None:
    lines = [f"# {title}", "", "Also as a self-contained [report.html](report.html).", ""]
    lead = [s for s in sections if s.lead]
    rest = [s for s in sections if not s.lead]
    for s in lead:
        lines += _section(s, out)
    lines += ["**Contents**", ""]
    lines += [f"- [{s.title}](#{s.title.lower().replace(' ', '-').replace(',', '').replace('/', '')})"
              for s in rest] + [""]
    for s in rest:
        lines += _section(s, out)
    atomic_write_text(path, "\n".join(lines))


def _section(s: Section, out: Path) -> list[str]:
    lines = [f"## {s.title}", ""]
    for p in s.text:  # the opening section's findings as a list, other sections' text as paragraphs
        lines += [f"- {p}"] if s.lead else [p, ""]
    lines += [""] if s.lead and s.text else []
    for t in s.tables:
        lines += table_md(t, out)
    for c in s.charts:
        png, svg = (x.relative_to(out).as_posix() for x in (c.png, c.svg))
        lines += [f"![{cell(c.caption)}]({png})", "", f"*{c.caption}* ([SVG]({svg}))", ""]
    for note in s.skipped:
        lines += [f"> Not drawn: {note}", ""]
    return lines
