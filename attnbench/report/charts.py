"""Scaling charts: latency, peak memory and achieved FLOP/s against the sequence length.

One chart per scenario (device, mode, dtype, B, Hq, D, causal). A series is coloured by its
variant and marked (marker and line style) by its backend; its label says only what differs
within the chart (labels.py). A chart of more than MAX_SERIES series becomes small multiples with
shared axes: one panel per kind (exact / approximation) and KV-head count, variants packed so no
panel holds more than MAX_SERIES, the baseline repeated in every panel. Latency lines carry a
p10–p90 band of the timed samples; a point with a single sample is drawn hollow. Latency and
memory are log-log with O(L) and O(L²) guides anchored at the baseline series (compare slopes,
not heights), labelled in the right margin; lengths that did not run (OOM, timeout, error,
skipped) are marked along the top edge. The FLOP/s chart draws the in-run GEMM reference. When
every series was measured at one length the chart is a bar per series (bar_chart): a line needs two.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.transforms import ScaledTranslation, blended_transform_factory

from attnbench.report.analysis import FAILED, SCENARIO_KEYS, Series, fmt_len, length
from attnbench.report.labels import chart_labels, subtitle, wrap
from attnbench.report.model import Chart, Context
from attnbench.report.style import (
    BASELINE_WIDTH,
    GUIDE,
    LINE_WIDTH,
    STATUS_MARKERS,
    bytes_unit,
    flops_unit,
    length_axis,
    log_y,
    new_figure,
    save,
    styled,
    time_unit,
)
from attnbench.report.tables import approximate

MAX_SERIES = 6  # more series than this in one chart: small multiples


@dataclass(frozen=True)
class Spec:
    kind: str  # file stem prefix
    what: str  # title
    field: str  # Series.xy field
    unit: Callable[[float, float], tuple[float, str]]  # (low, high) value -> (divisor, unit)
    ylabel: str
    how: str  # the "how to read this" line
    guides: bool = True


SPECS = {
    "latency": Spec("latency", "Median latency vs sequence length", "latency", time_unit,
                    "median latency ({unit})", "Lower is faster. Compare each line's slope with the grey guides "
                    "(O(L) and O(L²); in decode, O(1) and O(L) per token); the shaded band is p10–p90 of the "
                    "timed samples; hollow points had one sample."),
    "memory": Spec("memory", "Peak memory vs sequence length", "peak_mem_bytes", lambda lo, hi: bytes_unit(hi),
                   "peak memory above baseline ({unit})", "Lower uses less memory. A slope like the O(L) guide "
                   "means linear memory, like O(L²) quadratic; marks on the top edge are lengths that did not run."),
    "tflops": Spec("tflops", "Achieved throughput vs sequence length", "tflops", lambda lo, hi: flops_unit(hi),
                   "achieved {unit}", "Higher is better. The dashed line is the in-run GEMM of this dtype (a "
                   "practical roof); a line near it is compute bound.", guides=False),
}


def scenarios(everything: list[Series]) -> dict[tuple, list[Series]]:
    """Series grouped by scenario, keeping those where something ran."""
    out: dict[tuple, list[Series]] = {}
    for s in everything:
        if s.ok():
            out.setdefault(s.scenario(), []).append(s)
    return out


def slug(scenario: tuple) -> str:
    sc = dict(zip(SCENARIO_KEYS, scenario))
    text = f"{sc['device']}-{sc['mode']}-{sc['dtype']}-b{sc['batch']}-h{sc['heads']}-d{sc['head_dim']}"
    return re.sub(r"[^a-z0-9-]+", "-", text.lower() + ("-causal" if sc["causal"] else ""))


def facets(group: list[Series], baseline: str) -> list[tuple[str, list[Series]]]:
    """[(panel title, series)]: one panel when the chart holds ≤ MAX_SERIES series, else panels by
    kind and KV-head count, each variant's series kept together where they fit, the baseline in each."""
    if len(group) <= MAX_SERIES:
        return [("", group)]
    base = [s for s in group if s.name == baseline and s.axes["kv_heads"] == s.axes["heads"]][:1]
    rest = [s for s in group if s not in base]
    kinds: dict[tuple, list[Series]] = {}
    for s in sorted(rest, key=lambda s: (approximate(s), s.axes["kv_heads"] != s.axes["heads"], s.name)):
        kinds.setdefault((approximate(s), s.axes["heads"], s.axes["kv_heads"]), []).append(s)
    room = MAX_SERIES - len(base)
    out = []
    for (approx, hq, hkv), ss in kinds.items():
        name = ("approximations" if approx else "exact") + (f" · Hkv={hkv}" if hkv != hq else "")
        panels: list[list[Series]] = [[]]
        by_variant: dict[str, list[Series]] = {}
        for s in ss:
            by_variant.setdefault(s.axes["variant"], []).append(s)
        for vs in by_variant.values():
            for i in range(0, len(vs), room):
                chunk = vs[i:i + room]
                if len(panels[-1]) + len(chunk) > room:
                    panels.append([])
                panels[-1] += chunk
        panels = [p for p in panels if p]
        for k, p in enumerate(panels):
            out.append((name + (f" ({k + 1}/{len(panels)})" if len(panels) > 1 else ""), base + p))
    return out


@styled
def curve_chart(ctx: Context, scenario: tuple, group: list[Series], spec: Spec, stem: str = "") -> Chart | None:
    """One scaling chart (small multiples beyond MAX_SERIES series); None when no series has a value.
    `stem`: a prefix of the file names (the story's charts of a few series: "story-")."""
    group = [s for s in group if len(s.xy(spec.field)[0])]
    if not group:
        return None
    sc = dict(zip(SCENARIO_KEYS, scenario))
    if len({float(L) for s in group for L in s.xy(spec.field)[0]}) == 1:
        return bar_chart(ctx, scenario, group, spec, stem)
    values = np.concatenate([s.xy(spec.field)[1] for s in group])
    roof = ctx.gemm_flops(sc["device"], sc["dtype"]) if spec.kind == "tflops" else None
    div, unit = spec.unit(float(values.min()), max(float(values.max()), roof[0] / 1e12 if roof else 0.0))
    scale = 1.0 / div  # tflops are stored in TFLOP/s, memory in bytes, latency in ms
    labels = chart_labels(group)
    looks = ctx.palette.looks([labels.names[id(s)] for s in group])
    panels = facets(group, ctx.baseline)
    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(9.0 if ncols == 1 else 14.0, 6.0 if nrows == 1 else 4.1 * nrows + 0.9,
                           ncols=ncols, nrows=nrows, sharex=True, sharey=True)
    lengths = [length(r) for s in group for r in s.records if r["status"] == "ok" or r["status"] in FAILED]
    lo, hi = float(values.min()) * scale, float(values.max()) * scale
    if roof:
        hi = max(hi, roof[0] / 1e12 * scale)
    flat = [ax for row in axes for ax in row]
    for ax, (name, series) in zip(flat, panels):
        for s in series:
            label = labels.names[id(s)]
            _draw_series(ax, s, spec, scale, looks[label], label, s.name == ctx.baseline)
        if roof:
            ax.axhline(roof[0] / 1e12 * scale, color="#444444", ls="--", lw=1.2, zorder=1)
            _margin_label(ax, roof[0] / 1e12 * scale, f"GEMM roof\n{roof[0] / 1e12 * scale:.3g}")
        log_y(ax)
        ax.set_ylim(lo / 1.6, hi * 1.9)
        length_axis(ax, lengths)
        if spec.guides:
            _guides(ax, series, spec.field, scale, ctx.baseline, sc["mode"] == "decode")
        handles = _failure_marks(ax, series, looks, labels)
        ax.xaxis.set_tick_params(labelbottom=True)  # every panel's lengths are labelled: its legend sits below
        below = ScaledTranslation(0, -0.62 if len(panels) == 1 else -0.3, fig.dpi_scale_trans)  # under ticks (+ label)
        ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, loc="upper center", ncol=3 if ncols == 1 else 2,
                  bbox_to_anchor=(0.5, 0.0), bbox_transform=ax.transAxes + below, frameon=False, fontsize=8,
                  columnspacing=1.2, handlelength=2.6)
        if name:
            ax.set_title(name, fontsize=10, loc="left")
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    xlabel = "KV-cache length Lk (decode), log scale" if sc["mode"] == "decode" else "sequence length L, log scale"
    ylabel = spec.ylabel.format(unit=unit) + ", log scale"
    if len(panels) == 1:
        flat[0].set_xlabel(xlabel)
        flat[0].set_ylabel(ylabel)
    else:
        fig.supxlabel(xlabel, fontsize=10)
        fig.supylabel(ylabel, fontsize=10)
    fig.suptitle(f"{spec.what}\n{subtitle(sc, ctx.device_name(sc['device']), labels.shared)}", fontsize=11)
    _footnote(fig, labels.fixed_params, len(panels))
    png, svg = save(fig, ctx.out_dir, f"{stem}{spec.kind}-{slug(scenario)}")
    has_base = any(s.name == ctx.baseline for s in group)
    facet_note = f" Small multiples: {len(panels)} panels with shared axes" + \
        ("; the baseline (thick line) is in each." if has_base else ".") if len(panels) > 1 else ""
    return Chart(f"{spec.what} ({sc['mode']}, {sc['dtype']}, {len(group)} series)", png, svg,
                 spec.how + facet_note)


def bar_chart(ctx: Context, scenario: tuple, group: list[Series], spec: Spec, stem: str = "") -> Chart:
    """Every series measured at one and the same length: one horizontal bar each (a line needs two
    lengths), sorted best first, its value printed at its end; when the values span more than a
    decade, a dot each on a log axis (a bar's length would mean nothing there)."""
    sc = dict(zip(SCENARIO_KEYS, scenario))
    labels = chart_labels(group)
    L = int(group[0].xy(spec.field)[0][0])
    pts = sorted(((labels.names[id(s)], float(s.xy(spec.field)[1][0]), s) for s in group),
                 key=lambda p: -p[1] if spec.kind == "tflops" else p[1])
    div, unit = spec.unit(min(v for _, v, _ in pts), max(v for _, v, _ in pts))
    looks = ctx.palette.looks([n for n, _, _ in pts])
    fig, axes = new_figure(9.0, 1.6 + 0.42 * len(pts))
    ax = axes[0][0]
    ys = np.arange(len(pts))[::-1]
    vals = [v / div for _, v, _ in pts]
    colors = [looks[n].color for n, _, _ in pts]
    log = max(vals) / max(min(vals), 1e-300) > 10
    if log:  # a bar's length means nothing on a log axis: a dot per series, on a light guide line
        ax.hlines(ys, min(vals) / 2, vals, color="#dddddd", lw=1, zorder=1)
        ax.scatter(vals, ys, c=colors, s=60, zorder=3,
                   edgecolors=["#222222" if s.name == ctx.baseline else c for (_, _, s), c in zip(pts, colors)])
        log_y(ax, "x")
        ax.set_xlim(left=min(vals) / 2)
    else:
        ax.barh(ys, vals, color=colors, height=0.6, linewidth=1.6,
                edgecolor=["#222222" if s.name == ctx.baseline else "none" for _, _, s in pts])
    ax.set_yticks(ys, [n + (" (baseline)" if s.name == ctx.baseline else "") for n, _, s in pts], fontsize=9)
    for y, v in zip(ys, vals):
        ax.annotate(f"{v:.3g}", (v, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(right=max(vals) * (3.0 if ax.get_xscale() == "log" else 1.15))
    ax.set_xlabel(spec.ylabel.format(unit=unit) + f" at L = {fmt_len(L)}" + (", log scale" if log else ""))
    fig.suptitle(f"{spec.what.split(' vs ')[0]} at L = {fmt_len(L)}\n"
                 f"{subtitle(sc, ctx.device_name(sc['device']), labels.shared)}", fontsize=11)
    _footnote(fig, labels.fixed_params, 1)
    png, svg = save(fig, ctx.out_dir, f"{stem}{spec.kind}-{slug(scenario)}")
    better = "higher" if spec.kind == "tflops" else "lower"
    return Chart(f"{spec.what.split(' vs ')[0]} at L = {fmt_len(L)} ({sc['mode']}, {sc['dtype']}, "
                 f"{len(group)} series)", png, svg,
                 f"One length was measured, so each series is a {'dot' if log else 'bar'} ({better} is "
                 f"better), best first.")


def _draw_series(ax, s: Series, spec: Spec, scale: float, look, label: str, is_base: bool) -> None:
    L, y = s.xy(spec.field)
    lw = BASELINE_WIDTH if is_base else LINE_WIDTH
    ax.plot(L, y * scale, color=look.color, ls=look.ls, lw=lw, marker=look.marker, ms=6, mew=1.4,
            label=label + (" (baseline)" if is_base else ""), zorder=3)
    if spec.kind == "memory":
        return
    band, single = [], []
    for r in s.ok():
        samples = [x for x in (r.get("samples_ms") or []) if x and x > 0]
        med = (r.get("latency_ms") or {}).get("median")
        if not med or length(r) not in L:
            continue
        k = spec.field == "latency" and 1.0 or (r.get(spec.field) or 0.0) * med  # tflops ∝ 1 / latency
        if len(samples) >= 2 and k:
            p10, p90 = np.percentile(samples, [10, 90])
            band.append((length(r), *((p10, p90) if spec.field == "latency" else (k / p90, k / p10))))
        n = (r.get("latency_ms") or {}).get("n") or len(samples)
        if n == 1:
            single.append((length(r), float(y[list(L).index(length(r))])))
    if len(band) >= 2:
        bx, b_lo, b_hi = (np.array(v) for v in zip(*band))
        ax.fill_between(bx, b_lo * scale, b_hi * scale, color=look.color, alpha=0.15, lw=0, zorder=2)
    elif band:  # one length: the same p10–p90 as an error bar
        (bx, b_lo, b_hi), = band
        ax.plot([bx, bx], [b_lo * scale, b_hi * scale], color=look.color, alpha=0.45, lw=3, zorder=2)
    if single:
        sx, sy = zip(*single)
        ax.plot(sx, np.array(sy) * scale, ls="none", marker=look.marker, ms=6, mew=1.4, mfc="white",
                color=look.color, zorder=4)


def _anchor(series: list[Series], field: str, baseline: str) -> tuple[float, float] | None:
    """(L, value) where the guides start: the baseline's shortest length, else the first series'."""
    ordered = sorted(series, key=lambda s: (s.name != baseline, approximate(s), -len(s.xy(field)[0])))
    for s in ordered:
        L, y = s.xy(field)
        if len(L):
            return float(L.min()), float(y[np.argmin(L)])
    return None


def _guides(ax, series: list[Series], field: str, scale: float, baseline: str, decode: bool = False) -> None:
    """O(L) and O(L²) from the baseline's first point to the longest length; labels in the right margin.
    In decode (one query per step) the exact claim is O(L) per token: O(1) and O(L) are drawn instead."""
    start = _anchor(series, field, baseline)
    l1 = max(float(s.xy(field)[0].max()) for s in series if len(s.xy(field)[0]))
    if start is None or l1 <= start[0]:
        return
    l0, y0 = start[0], start[1] * scale
    xs = np.geomspace(l0, l1, 32)
    top = ax.get_ylim()[1]
    guides = ((0, "O(1)/token", ":"), (1, "O(L)/token", "--")) if decode else ((1, "O(L)", ":"), (2, "O(L²)", "--"))
    ends = [y0 * (l1 / l0) ** p for p, _, _ in guides]
    if max(ends) > top and max(ends) <= top * 30:  # a little room makes both guides end inside
        ax.set_ylim(ax.get_ylim()[0], max(ends) * 1.3)
    for p, text, ls in guides:
        ys = y0 * (xs / l0) ** p
        ax.plot(xs, ys, color=GUIDE, ls=ls, lw=1.1, zorder=1)
        _margin_label(ax, min(float(ys[-1]), ax.get_ylim()[1]), text + ("↑" if ys[-1] > ax.get_ylim()[1] else ""))


def _margin_label(ax, y: float, text: str) -> None:
    """A grey label just right of the axes at data height y (outside the data area)."""
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    ax.annotate(text, (1.0, y), xycoords=trans, xytext=(3, 0), textcoords="offset points", ha="left",
                va="center", color=GUIDE, fontsize=8, annotation_clip=False)


def _footnote(fig, fixed: str, n_panels: int) -> None:
    if fixed:
        fig.text(0.0, 0.0, wrap("Fixed parameters: " + fixed, 150 if n_panels > 1 else 110), ha="left", va="top",
                 fontsize=8, color="#555555")


def _failure_marks(ax, series: list[Series], looks, labels) -> list[Line2D]:
    """Mark lengths that did not run along the top edge; returns legend handles for the statuses."""
    seen = set()
    trans = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for s in series:
        for r in s.records:
            if r["status"] in FAILED:
                m, _ = STATUS_MARKERS[r["status"]]
                ax.plot([length(r)], [0.97], marker=m, ms=9, mew=2, color=looks[labels.names[id(s)]].color,
                        transform=trans, clip_on=False, ls="none")
                seen.add(r["status"])
    return [Line2D([], [], marker=STATUS_MARKERS[st][0], color="#444444", ls="none", mew=2, ms=8,
                   label=f"{STATUS_MARKERS[st][1]} (top edge)") for st in sorted(seen)]
