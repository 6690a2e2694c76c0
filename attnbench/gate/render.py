"""The gate's report in four formats: a plain-text table (terminal and CI logs), Markdown for a
CI job summary (verdict line first, regressions and improvements, the rest folded in
<details>), JSON, and JUnit XML (one testcase per benchmark case: <failure> for a regression or a
wrong output, <error> for a failed case, <skipped> for inconclusive and uncompared cases).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict

from attnbench.core.units import fmt_bytes, fmt_ms
from attnbench.gate.compare import CaseResult, Report
from attnbench.gate.sides import describe_differences

_WORD = {0: "PASS", 1: "FAIL", 2: "ERROR", 3: "INCOMPARABLE"}
_FIRST = ("regression", "wrong", "error", "improvement")


def headline(r: Report) -> str:
    """One line: PASS/FAIL/ERROR/INCOMPARABLE and the counts."""
    o = r.options
    word = _WORD[r.exit_code]
    if r.incomparable:
        return (f"{word}: the environments differ in {describe_differences(r.env_diff)}; compare results of "
                "one environment, or pass --allow-env-mismatch")
    n = r.counts()
    parts = [f"{n.get('regression', 0)} regression{'s' * (n.get('regression', 0) != 1)}"]
    plural = {"error": "errors", "improvement": "improvements"}
    parts += [f"{n[k]} {plural.get(k, k) if n[k] != 1 else k}" for k in
              ("wrong", "error", "improvement", "inconclusive", "slower", "faster", "same", "new", "missing", "n/a",
               "reference") if n.get(k)]
    gated = {"both": "latency+memory"}.get(o.metric, o.metric)
    return (f"{word}: {', '.join(parts)} of {len(r.cases)} cases (gated: {gated}; threshold "
            f"{o.threshold:.0%}, alpha {o.alpha:g}, normalize {o.normalize})")


def notes(r: Report) -> list[str]:
    out = []
    if r.env_diff and not r.incomparable:
        out.append(f"environment mismatch allowed: {describe_differences(r.env_diff)}")
    stale = r.stale
    if stale:
        out.append(f"{len(stale)} case(s) improved by more than twice the threshold: the baseline may be stale "
                   "— refresh it (attnbench baseline save)")
    return out


def _change(c: CaseResult) -> str:
    lat = c.latency
    if not lat or lat.ratio is None:
        return "-"
    return f"{(lat.ratio - 1) * 100:+.1f}% [{(lat.lo - 1) * 100:+.1f}, {(lat.hi - 1) * 100:+.1f}]"


def _mem(c: CaseResult) -> str:
    m = c.memory
    if not m or m.base is None or m.cur is None:
        return "-"
    return f"{fmt_bytes(m.base)} → {fmt_bytes(m.cur)}" + ("" if m.verdict in ("same", "n/a") else f" ({m.verdict})")


def _p(c: CaseResult) -> str:
    return f"{c.latency.p:.2g}" if c.latency and c.latency.p is not None else "-"


def _row(c: CaseResult) -> list[str]:
    why = c.why + (f"; {c.note}" if c.note else "")
    return [c.verdict, c.label, fmt_ms(c.base_ms), fmt_ms(c.cur_ms), _change(c), _p(c), _mem(c), why]


_HEAD = ["verdict", "case", "base ms", "cur ms", "change (99% CI)", "p", "peak memory", "why"]


def _ordered(r: Report) -> list[CaseResult]:
    order = ("wrong", "error", "regression", "inconclusive", "slower", "improvement", "faster", "new", "missing",
             "incomparable", "reference", "n/a", "same")
    return sorted(r.cases, key=lambda c: (order.index(c.verdict) if c.verdict in order else 99, c.label))


def to_table(r: Report) -> str:
    rows = [_HEAD] + [_row(c) for c in _ordered(r)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEAD) - 1)]
    lines = [headline(r), ""]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join([*lines, "", *notes(r)]).rstrip() + "\n"


def _md_table(cases: list[CaseResult]) -> list[str]:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    out += ["| " + " | ".join(esc(x) for x in _row(c)) + " |" for c in cases]
    return out


def to_markdown(r: Report) -> str:
    word, _, rest = headline(r).partition(": ")
    lines = [f"**{word}** — attnbench gate: {rest}", ""]
    lines += [f"> {n}" for n in notes(r)] + ([""] if notes(r) else [])
    first = [c for c in _ordered(r) if c.verdict in _FIRST]
    rest = [c for c in _ordered(r) if c.verdict not in _FIRST]
    if first:
        lines += ["#### Regressions, wrong outputs, errors and improvements", "", *_md_table(first), ""]
    if rest:
        what = (f"The other {len(rest)} case{'s' * (len(rest) != 1)}" if first
                else f"All {len(rest)} case{'s' * (len(rest) != 1)}")
        lines += [f"<details><summary>{what}</summary>", "", *_md_table(rest), "", "</details>", ""]
    lines += [f"baseline: `{', '.join(r.baseline)}` · current: `{', '.join(r.current)}`", ""]
    return "\n".join(lines)


def to_json(r: Report) -> str:
    doc = {"verdict": _WORD[r.exit_code], "exit_code": r.exit_code, "headline": headline(r),
           "counts": r.counts(), "options": asdict(r.options), "baseline": list(r.baseline),
           "current": list(r.current), "env_diff": {k: list(v) for k, v in r.env_diff.items()},
           "notes": notes(r), "cases": [asdict(c) for c in r.cases]}
    return json.dumps(doc, indent=2, default=str) + "\n"


def to_junit(r: Report) -> str:
    n = r.counts()
    skipped = sum(v for k, v in n.items() if k not in ("regression", "wrong", "error", "same", "slower", "faster",
                                                        "improvement", "reference"))
    attrs = {"name": "attnbench.gate", "tests": str(len(r.cases)),
             "failures": str(n.get("regression", 0) + n.get("wrong", 0)),
             "errors": str(n.get("error", 0)), "skipped": str(skipped)}
    root = ET.Element("testsuites", attrs)
    suite = ET.SubElement(root, "testsuite", attrs)
    props = ET.SubElement(suite, "properties")
    for k, v in asdict(r.options).items():
        ET.SubElement(props, "property", {"name": k, "value": str(v)})
    for c in r.cases:
        rec_cls = "attnbench." + c.label.split(" ", 1)[0].replace("/", ".")
        tc = ET.SubElement(suite, "testcase", {"classname": rec_cls, "name": c.label})
        detail = "\n".join(f"{h}: {v}" for h, v in zip(_HEAD, _row(c)))
        if c.verdict in ("regression", "wrong"):
            ET.SubElement(tc, "failure", {"message": c.why, "type": c.verdict}).text = detail
        elif c.verdict == "error":
            ET.SubElement(tc, "error", {"message": c.why, "type": "error"}).text = detail
        elif c.verdict not in ("same", "slower", "faster", "improvement", "reference"):
            ET.SubElement(tc, "skipped", {"message": f"{c.verdict}: {c.why}"})
        else:
            ET.SubElement(tc, "system-out").text = detail
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


RENDERERS = {"table": to_table, "markdown": to_markdown, "json": to_json, "junit": to_junit}
SUFFIX_FORMATS = {".txt": "table", ".md": "markdown", ".json": "json", ".xml": "junit"}
