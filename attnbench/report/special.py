"""Two focused charts: GQA/MQA (latency and KV-cache bytes against KV groups) and the
accuracy-vs-latency Pareto chart of approximate variants at a fixed length.

GQA/MQA: drawn for each (device, dtype, B, H, D, causal) where a curve ran at two or more KV-head
counts; one row of panels per mode (fwd, decode, ...), at the longest length where that happened.
mha, gqa and mqa are one computation at different KV-head counts, so each backend is one curve
across them ("mha/gqa/mqa:sdpa"); another variant is a curve of its own when it ran at several
KV-head counts. KV-cache bytes are the analytic 2·B·Hkv·Lk·D·itemsize of the records.
Pareto: error against full softmax attention (`full_rel_l2`, else `rel_l2` for approximations
whose reference is exact attention) against median latency, both log; exact variants appear as
reference points (an error of exactly 0 is drawn at the floor of the axis and said so).
"""

from __future__ import annotations

from collections import Counter

from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from attnbench.variants import registry
from attnbench.report.analysis import SCENARIO_KEYS, Series, fmt_len, length
from attnbench.core.errors import UsageError
from attnbench.report.charts import slug
from attnbench.report.model import Chart, Context
from attnbench.report.style import GUIDE, bytes_unit, log_y, new_figure, save, styled, title
from attnbench.report.tables import tag

GQA_KEYS = ("device", "dtype", "batch", "heads", "head_dim", "causal")


KV_FAMILY = ("mha", "gqa", "mqa")  # one computation at three KV-head counts: drawn as one curve per backend


def gqa_charts(ctx: Context, everything: list[Series]) -> tuple[list[Chart], list[str]]:
    groups: dict[tuple, list[Series]] = {}
    for s in everything:
        if s.ok():
            groups.setdefault(tuple(s.axes[k] for k in GQA_KEYS), []).append(s)
    charts = []
    for key, group in sorted(groups.items(), key=lambda kv: str(kv[0])):
        panels = {m: c for m in ("fwd", "decode", "bwd", "fwd+bwd") if (c := _curves(group, m))[1]}
        if panels:
            charts.append(_gqa_chart(ctx, dict(zip(GQA_KEYS, key)), panels))
    skipped = [] if charts else ["GQA/MQA chart: no series ran at two or more KV-head counts for the same "
                                 "query heads (run e.g. --variants mha,gqa,mqa or --kv-groups 1,2,4,8)."]
    return charts, skipped


def _curves(group: list[Series], mode: str) -> tuple[int | None, dict[str, list[tuple[int, float, float]]]]:
    """(L, {curve: [(groups, latency ms, kv bytes)]}) at the longest L where a curve has 2+ KV counts."""
    by_len: dict[int, dict[str, dict[int, tuple[float, float]]]] = {}
    for s in group:
        if s.axes["mode"] != mode:
            continue
        name = _gqa_name(s)
        for r in s.ok():
            g = s.axes["heads"] // r["kv_heads"]
            by_len.setdefault(length(r), {}).setdefault(name, {})[g] = (r["latency_ms"]["median"],
                                                                       r.get("kv_cache_bytes") or 0.0)
    good = [L for L, curves in by_len.items() if any(len(pts) >= 2 for pts in curves.values())]
    if not good:
        return None, {}
    L = max(good)
    curves = {n: sorted((g, *v) for g, v in pts.items()) for n, pts in by_len[L].items()
              if len(pts) >= 2 or n.startswith("mha/gqa/mqa")}
    return L, curves


def _gqa_name(s: Series) -> str:
    if s.axes["variant"] in KV_FAMILY:
        return f"mha/gqa/mqa:{s.axes['backend']}"
    return s.name + "".join(f" {k}={v}" for k, v in s.params().items())


@styled
def _gqa_chart(ctx: Context, sc: dict, panels: dict[str, tuple[int, dict]]) -> Chart:
    fig, axes = new_figure(11, 3.9 * len(panels), ncols=2, nrows=len(panels))
    heads = sc["heads"]
    for row, (mode, (L, curves)) in zip(axes, panels.items()):
        kv_bytes: dict[int, float] = {}
        for name, pts in sorted(curves.items()):
            g, ms, kvb = zip(*pts)
            row[0].plot(g, ms, marker=ctx.palette.marker(name), color=ctx.palette.color(name),
                        mfc="none", mew=1.6, ms=8, lw=1.8, label=name)
            kv_bytes.update({x: b for x, b in zip(g, kvb) if b})
        row[0].set_ylabel("median latency (ms)")
        row[0].set_title(f"{mode}: latency at L={fmt_len(L)}")
        row[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
        if kv_bytes:
            div, unit = bytes_unit(max(kv_bytes.values()))
            g = sorted(kv_bytes)
            row[1].plot(g, [kv_bytes[x] / div for x in g], color="#444444", marker="o", lw=1.8)
            row[1].set_ylabel(f"KV-cache bytes ({unit})")
            row[1].set_title(f"{mode}: K+V bytes at L={fmt_len(L)} (2·B·Hkv·Lk·D·itemsize)")
        all_groups = sorted({g for pts in curves.values() for g, *_ in pts})
        for ax in row:
            _groups_axis(ax, heads, all_groups)
            log_y(ax)
    scn = {**sc, "mode": "/".join(panels)}
    fig.suptitle(title("GQA/MQA: query heads per KV head", scn, ctx.device_name(sc["device"])))
    stem = f"gqa-{slug(tuple(scn[k] if k != 'mode' else 'all' for k in SCENARIO_KEYS))}"
    png, svg = save(fig, ctx.out_dir, stem)
    return Chart(f"GQA/MQA: latency and KV-cache bytes against KV groups (H={heads}, {sc['dtype']})", png, svg)


def _groups_axis(ax, heads: int, groups: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(groups))
    ax.xaxis.set_minor_locator(NullLocator())
    names = {1: "1 (MHA)", heads: f"{heads} (MQA)"}
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: names.get(int(round(x)), f"{int(round(x))}")))
    ax.set_xlabel(f"query heads per KV head (H={heads})")


# ---------------------------------------------------------------- Pareto
def _approximate(variant: str) -> bool:
    try:
        v = registry.get(variant)
    except UsageError:
        return False
    return (not v.exact) or v.full_attention_error


def _error(r: dict) -> float | None:
    err = r.get("error") or {}
    return err.get("full_rel_l2", err.get("rel_l2"))


def pareto_charts(ctx: Context, everything: list[Series]) -> tuple[list[Chart], list[str]]:
    by_scn: dict[tuple, list[tuple[Series, dict]]] = {}
    for s in everything:
        for r in s.ok():
            if _error(r) is not None:
                by_scn.setdefault(s.scenario(), []).append((s, r))
    charts = []
    for scn, pts in sorted(by_scn.items(), key=lambda kv: str(kv[0])):
        approx = Counter(length(r) for s, r in pts if _approximate(s.axes["variant"]))
        if approx:
            L = max(approx, key=lambda x: (approx[x], x))  # most approximate points; ties: longest
            charts.append(_pareto(ctx, dict(zip(SCENARIO_KEYS, scn)), [(s, r) for s, r in pts if length(r) == L], L))
    skipped = [] if charts else ["Accuracy-vs-latency chart: no approximate or pattern variant with an "
                                 "error against full attention in the data."]
    return charts, skipped


@styled
def _pareto(ctx: Context, sc: dict, pts: list[tuple[Series, dict]], L: int) -> Chart:
    errs = [e for _, r in pts if (e := _error(r))]
    floor = min(errs) / 10 if errs else 1e-9
    fig, axes = new_figure(8.5, 5.2)
    ax = axes[0][0]
    xy = []
    for s, r in pts:
        name, e = tag(s), _error(r)
        x, y = r["latency_ms"]["median"], e if e else floor
        approx = _approximate(s.axes["variant"])
        ax.plot([x], [y], marker=ctx.palette.marker(name), color=ctx.palette.color(name), ls="none", ms=9,
                mfc=ctx.palette.color(name) if approx else "none", mew=1.6, label=name + ("" if approx else " (exact)"))
        if approx:  # name the approximations on the plot; exact points are in the legend
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(7, 4), fontsize=8, color="#333333")
        xy.append((x, y))
    front = _frontier(xy)
    ax.step(*zip(*front), where="post", color=GUIDE, lw=1.2, ls="--", zorder=0, label="Pareto frontier")
    log_y(ax, "x")
    log_y(ax)
    ax.set_xlabel("median latency (ms), log scale")
    ax.set_ylabel("relative L2 error vs full softmax attention, log scale")
    ax.set_title(title(f"Accuracy vs latency at L={fmt_len(L)}", sc, ctx.device_name(sc["device"])))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if any(not e for _, r in pts if (e := _error(r)) is not None):
        ax.text(0.01, 0.01, f"error 0 drawn at {floor:.0e}", transform=ax.transAxes, fontsize=8, color=GUIDE)
    png, svg = save(fig, ctx.out_dir, f"pareto-{slug(tuple(sc[k] for k in SCENARIO_KEYS))}")
    return Chart(f"Accuracy vs latency at L={fmt_len(L)} ({sc['mode']}, {sc['dtype']})", png, svg)


def _frontier(xy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both latency and error, by increasing latency."""
    out, best = [], float("inf")
    for x, y in sorted(xy):
        if y < best:
            out.append((x, y))
            best = y
    return out
