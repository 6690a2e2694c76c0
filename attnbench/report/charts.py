"""Scaling charts: latency, peak memory and achieved FLOP/s against the sequence length.

One chart per scenario (device, mode, dtype, B, H, D, causal); one line per series, coloured by
series and marked by backend. Latency and memory are log-log with O(L) and O(L²) guide lines
anchored at the shortest length (compare slopes, not heights); lengths that did not run (OOM,
timeout, error, skipped) are marked along the top edge. The FLOP/s chart draws the in-run GEMM
reference of the run's dtype as the roofline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from matplotlib.lines import Line2D

from attnbench.report.analysis import FAILED, SCENARIO_KEYS, Series, length
from attnbench.report.model import Chart, Context
from attnbench.report.style import GUIDE, STATUS_MARKERS, bytes_unit, flops_unit, length_axis, log_y, new_figure, save, styled, title
from attnbench.report.tables import tag


@dataclass(frozen=True)
class Spec:
    kind: str  # file stem prefix
    what: str  # title
    field: str  # Series.xy field
    unit: Callable[[float], tuple[float, str]]  # peak value -> (divisor, unit)
    ylabel: str
    guides: bool = True


SPECS = {
    "latency": Spec("latency", "Median latency vs sequence length", "latency", lambda _: (1.0, "ms"),
                    "median latency ({unit})"),
    "memory": Spec("memory", "Peak memory vs sequence length", "peak_mem_bytes", bytes_unit,
                   "peak memory above baseline ({unit})"),
    "tflops": Spec("tflops", "Achieved throughput vs sequence length", "tflops", flops_unit,
                   "achieved {unit}", guides=False),
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


@styled
def curve_chart(ctx: Context, scenario: tuple, group: list[Series], spec: Spec) -> Chart | None:
    """One scaling chart; None when no series has a value for the field."""
    data = [(s, *s.xy(spec.field)) for s in group]
    data = [(s, L, y) for s, L, y in data if len(L)]
    if not data:
        return None
    sc = dict(zip(SCENARIO_KEYS, scenario))
    peak = max(float(y.max()) for _, _, y in data)
    roof = ctx.gemm_flops(sc["device"], sc["dtype"]) if spec.kind == "tflops" else None
    div, unit = spec.unit(max(peak, roof[0] / 1e12) if roof else peak)
    scale = 1.0 / div  # tflops are stored in TFLOP/s, memory in bytes, latency in ms
    fig, axes = new_figure()
    ax = axes[0][0]
    for i, (s, L, y) in enumerate(data):
        name = tag(s)  # hollow markers, each line thinner than the one below: equal curves stay visible
        ax.plot(L, y * scale, marker=ctx.palette.marker(name), color=ctx.palette.color(name),
                lw=max(3.4 - 0.4 * i, 1.0), ms=max(12 - 1.2 * i, 5), mfc="none", mew=1.6, label=name)
    values = np.concatenate([y * scale for _, _, y in data])
    lengths = np.concatenate([L for _, L, _ in data] + [np.array([length(r) for s in group for r in s.records
                                                                   if r["status"] in FAILED], float)])
    lo, hi = values.min(), values.max()
    if roof:
        hi = max(hi, roof[0] / 1e12 * scale)
        ax.axhline(roof[0] / 1e12 * scale, color="#444444", ls="--", lw=1.2,
                   label=f"in-run GEMM {roof[1]}² {sc['dtype']}: {roof[0] / 1e12 * scale:.3g} {unit}")
    log_y(ax)
    ax.set_ylim(lo / 1.8, hi * 2.2)
    length_axis(ax, lengths)
    if spec.guides:
        _guides(ax, data, scale)
    handles = _failure_marks(ctx, ax, group)
    ax.set_xlabel("sequence length L (KV-cache length in decode)" if sc["mode"] == "decode"
                  else "sequence length L (log scale)")
    ax.set_ylabel(spec.ylabel.format(unit=unit) + ", log scale")
    ax.set_title(title(spec.what, sc, ctx.device_name(sc["device"])))
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)
    png, svg = save(fig, ctx.out_dir, f"{spec.kind}-{slug(scenario)}")
    return Chart(f"{spec.what} ({sc['mode']}, {sc['dtype']})", png, svg)


def _guides(ax, data, scale: float) -> None:
    """O(L) and O(L²) through the geometric mean of the values at the shortest length."""
    l0 = min(float(L.min()) for _, L, _ in data)
    l1 = max(float(L.max()) for _, L, _ in data)
    if l1 <= l0:
        return
    at0 = [float(y[np.argmin(L)]) * scale for _, L, y in data if float(L.min()) == l0]
    y0 = float(np.exp(np.mean(np.log(at0))))
    xs = np.geomspace(l0, l1, 32)
    for p, text, ls in ((1, "O(L)", ":"), (2, "O(L²)", "--")):
        ys = y0 * (xs / l0) ** p
        ax.plot(xs, ys, color=GUIDE, ls=ls, lw=1.1, zorder=0, label=f"{text} guide")
        inside = ys <= ax.get_ylim()[1]
        k = int(np.nonzero(inside)[0][-1]) if inside.any() else 0
        ax.annotate(text, (xs[k], ys[k]), textcoords="offset points", xytext=(-4, 4), ha="right",
                    color=GUIDE, fontsize=9)


def _failure_marks(ctx: Context, ax, group: list[Series]) -> list[Line2D]:
    """Mark lengths that did not run along the top edge; returns legend handles for the statuses."""
    seen = set()
    trans = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for s in group:
        for r in s.records:
            if r["status"] in FAILED:
                m, _ = STATUS_MARKERS[r["status"]]
                ax.plot([length(r)], [0.97], marker=m, ms=9, mew=2, color=ctx.palette.color(tag(s)),
                        transform=trans, clip_on=False, ls="none")
                seen.add(r["status"])
    return [Line2D([], [], marker=STATUS_MARKERS[st][0], color="#444444", ls="none", mew=2, ms=8,
                   label=f"{STATUS_MARKERS[st][1]} (top edge)") for st in sorted(seen)]
