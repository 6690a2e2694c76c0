"""History across runs: per-case trend lines over several results files (like asv's graphs).

Given results files in run order (`attnbench report base.jsonl cur.jsonl ...`, or every .jsonl of
`--history DIR` ordered by each header's `created`), a *case* is one series (variant, backend and
every fixed axis) at one length; a case measured (status ok) in two or more runs gets a trend line
of its median latency with its p10–p90 as a bar. One small panel per series (its lengths as lines,
at most MAX_PANELS panels, the series with the largest last-vs-first change first), each with its
own y axis, so a regression is seen against the run-to-run spread of that case. Honest limits: runs
on different machines or loads are drawn side by side all the same; the x axis is run order, not time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from attnbench.core.errors import UsageError
from attnbench.report.analysis import fmt_len, length, series
from attnbench.report.labels import chart_labels
from attnbench.report.model import Chart, Context, Section
from attnbench.report.style import COLORS, LINE_WIDTH, MARKERS, log_y, new_figure, save, styled, time_unit

MAX_PANELS = 24
HOW = ("Each panel is one series, each line one length; x is the run (file) in the order given, y the median "
       "latency with its p10–p90 bar. A step up that leaves the bars of earlier runs is a regression.")


def _cases(runs: list[list[dict]]) -> dict[str, dict[int, list[tuple[int, dict]]]]:
    """{series tag: {L: [(run index, record)]}} for cases that ran in two or more runs."""
    out: dict[str, dict[int, list[tuple[int, dict]]]] = {}
    unique = {s.key: s for recs in runs for s in series(recs)}
    short = chart_labels(list(unique.values())).names  # params only where they differ
    label = {k: short[id(s)] for k, s in unique.items()}
    for i, recs in enumerate(runs):
        for s in series(recs):
            name = f"{label[s.key]} · {s.axes['mode']} {s.axes['dtype']} B{s.axes['batch']} Hq{s.axes['heads']}" \
                   f" D{s.axes['head_dim']}" + (" causal" if s.axes["causal"] else "") + f" {s.axes['device']}"
            for r in s.ok():
                out.setdefault(name, {}).setdefault(length(r), []).append((i, r))
    return {n: {L: pts for L, pts in by_len.items() if len(pts) >= 2}
            for n, by_len in out.items() if any(len(p) >= 2 for p in by_len.values())}


def _change(by_len: dict[int, list[tuple[int, dict]]]) -> float:
    """The largest |log(last / first)| of a series' lengths: how much it moved."""
    return max(abs(math.log(pts[-1][1]["latency_ms"]["median"] / pts[0][1]["latency_ms"]["median"]))
               for pts in by_len.values())


def history_section(ctx: Context, names: list[str], runs: list[list[dict]]) -> Section | None:
    """The "History across runs" section, or None with fewer than two runs."""
    if len(runs) < 2:
        return None
    sec = Section("History across runs", [f"{len(runs)} runs in this order: " + ", ".join(
        f"#{i + 1} {n}" for i, n in enumerate(names)) + "."])
    cases = _cases(runs)
    if not cases:
        sec.skipped.append("History: no case (series and length) ran in two or more of the runs.")
        return sec
    ranked = sorted(cases, key=lambda n: -_change(cases[n]))
    shown = ranked[:MAX_PANELS]
    if len(ranked) > MAX_PANELS:
        sec.text.append(f"The {MAX_PANELS} series that moved most of {len(ranked)} are drawn.")
    sec.charts.append(_chart(ctx, names, {n: cases[n] for n in shown}))
    return sec


@styled
def _chart(ctx: Context, names: list[str], cases: dict) -> Chart:
    ncols = min(3, len(cases))
    nrows = math.ceil(len(cases) / ncols)
    fig, axes = new_figure(4.6 * ncols + 1.5, 3.0 * nrows + 0.8, ncols=ncols, nrows=nrows)
    flat = [ax for row in axes for ax in row]
    allms = [r["latency_ms"]["median"] for by_len in cases.values() for pts in by_len.values() for _, r in pts]
    div, unit = time_unit(min(allms), max(allms))
    lengths = sorted({L for c in cases.values() for L in c})
    looks = {L: (COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]) for i, L in enumerate(lengths)}
    for ax, (name, by_len) in zip(flat, cases.items()):
        for L, pts in sorted(by_len.items()):
            color, marker = looks[L]
            x = np.array([i + 1 for i, _ in pts], float)
            y = np.array([r["latency_ms"]["median"] for _, r in pts]) / div
            ax.plot(x, y, color=color, marker=marker, lw=LINE_WIDTH, ms=5, label=f"L={fmt_len(L)}")
            for xi, (_, r) in zip(x, pts):
                s = [v for v in (r.get("samples_ms") or []) if v and v > 0]
                if len(s) >= 2:
                    lo, hi = np.percentile(s, [10, 90]) / div
                    ax.plot([xi, xi], [lo, hi], color=color, alpha=0.45, lw=3)
        log_y(ax)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xlim(0.6, len(names) + 0.4)
        ax.set_title(name.split(" · ")[0], fontsize=9, loc="left")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    for ax in flat[len(cases):]:
        ax.set_visible(False)
    fig.supxlabel("run #", fontsize=10)
    fig.supylabel(f"median latency ({unit}), log scale", fontsize=10)
    first = next(iter(cases))
    fig.suptitle(f"History across {len(names)} runs\n{first.split(' · ')[1]}" if len(
        {n.split(' · ')[1] for n in cases}) == 1 else f"History across {len(names)} runs", fontsize=11)
    png, svg = save(fig, ctx.out_dir, "history")
    return Chart(f"History of {len(cases)} series across {len(names)} runs", png, svg, HOW)


def history_files(directory: Path) -> list[Path]:
    """Every .jsonl of a directory, oldest first by its header's `created` (then by name)."""
    from attnbench.core.results import read

    if not Path(directory).is_dir():
        raise UsageError(f"--history '{directory}' is not a directory; give a directory of .jsonl results files")
    found = []
    for p in sorted(Path(directory).glob("*.jsonl")):
        h, _ = read(p)
        found.append((str(h.get("created") or ""), p.name, p))
    if not found:
        raise UsageError(f"--history '{directory}' holds no .jsonl results files")
    return [p for *_, p in sorted(found)]

