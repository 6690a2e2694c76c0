"""The report's "Wrong results" section: every ok record whose output is wrong (core/correctness.py),
with its timing kept for the record and the reason it was left out of every speedup, crossover, fit,
verdict, chart and the model section; and the line saying how many ok records were not checked (no
measured error), which the measurements section carries.
"""

from __future__ import annotations

from collections import Counter

from attnbench.core import correctness
from attnbench.report.analysis import fmt_len, length
from attnbench.report.model import Section

COLUMNS = (("series", "series"), ("scenario", "scenario"), ("L", "L"), ("latency", "median latency"),
           ("reason", "why it is wrong"))


def rows(wrong: list[tuple[dict, str]]) -> list[dict]:
    """One row per wrong record: its name, shape, length, median latency (kept) and reason."""
    out = []
    for r, reason in wrong:
        median = (r.get("latency_ms") or {}).get("median")
        out.append({"series": f"{r['variant']}:{r['backend']}",
                    "scenario": f"{r['mode']} {r['dtype']} B{r['batch']} H{r['heads']}/{r['kv_heads']} "
                                f"D{r['head_dim']}" + (" causal" if r.get("causal") else "") + f" {r['device']}",
                    "L": fmt_len(length(r)), "latency": f"{median:.4g} ms" if median else "-",
                    "params": r.get("params") or {}, "reason": reason})
    return out


def not_checked_line(records: list[dict]) -> str | None:
    """How many ok records carry no judgement (their error was not measured), grouped by why."""
    why = Counter(j.reason for j in map(correctness.judge, records) if j.state == correctness.NOT_CHECKED)
    if not why:
        return None
    parts = "; ".join(f"{n} — {reason}" for reason, n in why.most_common(4))
    return (f"{sum(why.values())} ok record{'s' if sum(why.values()) > 1 else ''} not checked for correctness "
            f"(kept in every view, with no verdict on their output): {parts}.")


def section(wrong: list[tuple[dict, str]], table) -> Section | None:
    """The section (None when nothing is wrong); `table(title, columns, rows, name)` writes its CSV
    (report/build.py). The count of records not checked goes beside the measurements (not_checked_line)."""
    if not wrong:
        return None
    sec = Section("Wrong results")
    if wrong:
        sec.text.append(
            f"{len(wrong)} ok record{'s' if len(wrong) > 1 else ''} computed a wrong output: the error against "
            "its own oracle exceeds what its dtype and length allow (core/tolerance.py; an approximation is held "
            "to its own formulation, not to exact attention), or it failed its definition's reference. Each is "
            "left out of every speedup, crossover, fit, verdict, chart and recommendation of this report; its "
            "timing is kept here for the record.")
        sec.tables.append(table("wrong results", COLUMNS, rows(wrong), "wrong"))
    return sec
