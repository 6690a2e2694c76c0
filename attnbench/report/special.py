"""Two focused charts: GQA/MQA (latency and KV-cache bytes against KV groups) and the
accuracy-vs-latency Pareto chart of approximate variants at a fixed length.

GQA/MQA: drawn for each (device, dtype, B, H, D, causal) where a curve ran at two or more KV-head
counts; one row of panels per mode (fwd, decode, ...), at the longest length where that happened.
mha, gqa and mqa are one computation at different KV-head counts, so each backend is one curve
across them ("mha/gqa/mqa:sdpa"); another variant is a curve of its own when it ran at several
KV-head counts. KV-cache bytes are the analytic 2·B·Hkv·Lk·D·itemsize of the records.
Pareto: error against full softmax attention (`full_rel_l2`, else `rel_l2` for approximations
whose reference is exact attention) against median latency, both log. Exact results (and errors
of exactly 0) sit in a strip of their own below the log axis, never at a made-up small error; the
region error ≥ 1 (worse than returning zeros) is shaded; the frontier is computed over the
approximations with error < 1; point labels are placed without overlap (placement.py).
"""

from __future__ import annotations

from collections import Counter

from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
from matplotlib.transforms import blended_transform_factory

from attnbench.report.analysis import SCENARIO_KEYS, Series, fmt_len, length
from attnbench.report.charts import slug
from attnbench.report.labels import chart_labels, subtitle, wrap
from attnbench.report.model import Chart, Context
from attnbench.report.placement import place_labels
from attnbench.report.style import GUIDE, LINE_WIDTH, bytes_unit, log_y, new_figure, save, styled, time_unit, title
from attnbench.report.tables import approximate

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
        looks = ctx.palette.looks(sorted(curves))
        every_ms = [p[1] for pts in curves.values() for p in pts]
        div, unit = time_unit(min(every_ms), max(every_ms))
        for name, pts in sorted(curves.items()):
            g, ms, kvb = zip(*pts)
            ms = [x / div for x in ms]
            lk = looks[name]
            row[0].plot(g, ms, marker=lk.marker, color=lk.color, ls=lk.ls, mew=1.4, ms=7, lw=LINE_WIDTH, label=name)
            kv_bytes.update({x: b for x, b in zip(g, kvb) if b})
        row[0].set_ylabel(f"median latency ({unit})")
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
    return Chart(f"GQA/MQA: latency and KV-cache bytes against KV groups (Hq={heads}, {sc['dtype']})", png, svg,
                 "Left: latency as query heads share fewer KV heads (1 = MHA, Hq = MQA); right: the K+V bytes "
                 "that sharing saves. A flat left curve means the kernel does not profit from sharing.")


def _groups_axis(ax, heads: int, groups: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(groups))
    ax.xaxis.set_minor_locator(NullLocator())
    names = {1: "1 (MHA)", heads: f"{heads} (MQA)"}
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: names.get(int(round(x)), f"{int(round(x))}")))
    ax.set_xlabel(f"query heads per KV head (H={heads})")


# ---------------------------------------------------------------- Pareto
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
        approx = Counter(length(r) for s, r in pts if approximate(s))
        every = Counter(length(r) for s, r in pts)
        if approx:  # the length with the most points (approximate and exact) that has an approximation
            L = max(approx, key=lambda x: (every[x], approx[x], x))
            charts.append(_pareto(ctx, dict(zip(SCENARIO_KEYS, scn)), [(s, r) for s, r in pts if length(r) == L], L))
    skipped = [] if charts else ["Accuracy-vs-latency chart: no approximate or pattern variant with an "
                                 "error against full attention in the data."]
    return charts, skipped


PARETO_HOW = ("Down and left is better. The bottom strip holds exact results (rounding error only, or an error "
              "of exactly 0); the red region (error ≥ 1) is worse than returning zeros; the dashed step is the "
              "Pareto frontier of the approximations with error < 1; the dotted line is the fastest exact result.")


@styled
def _pareto(ctx: Context, sc: dict, pts: list[tuple[Series, dict]], L: int) -> Chart:
    labels = chart_labels([s for s, _ in pts])
    looks = ctx.palette.looks([labels.names[id(s)] for s, _ in pts])
    lat = [r["latency_ms"]["median"] for _, r in pts]
    div, unit = time_unit(min(lat), max(lat))
    exact = [(s, r) for s, r in pts if not approximate(s) or not _error(r)]
    fig, axes = new_figure(9.5, 6.2, nrows=2, sharex=True, gridspec_kw={"height_ratios": (5, 1)})
    ax, band = axes[0][0], axes[1][0]
    marks: dict = {ax: ([], [], []), band: ([], [], [])}
    for s, r in pts:
        target = band if (s, r) in exact else ax
        look = looks[labels.names[id(s)]]
        x, y = r["latency_ms"]["median"] / div, (_error(r) if target is ax else 0.5)
        target.plot([x], [y], marker=look.marker, color=look.color, ls="none", ms=8, mew=1.4, zorder=3)
        for lst, v in zip(marks[target], ((x, y), labels.names[id(s)], look.color)):
            lst.append(v)
    errs = [y for _, y in marks[ax][0]] or [0.1]
    ax.set_yscale("log")
    ax.set_ylim(min(min(errs) / 3, 0.3), max(max(errs), 1.0) * 3)  # error 1 is always on the axis
    ax.axhspan(1.0, ax.get_ylim()[1], color="#d62728", alpha=0.08, lw=0, zorder=0)
    ax.axhline(1.0, color="#d62728", lw=0.8, alpha=0.5, zorder=1)
    front = _frontier([p for p in marks[ax][0] if p[1] < 1.0])
    if len(front) > 1:
        ax.step(*zip(*front), where="post", color=GUIDE, lw=1.2, ls="--", zorder=2)
    log_y(ax)
    band.set_ylim(0, 1)
    band.set_yticks([])
    band.set_xscale("log")
    xs = [x / div for x in lat]
    band.set_xlim(min(xs) / 1.6, max(xs) * 1.6)  # room for labels left and right of the extreme points
    log_y(band, "x")
    if exact:
        fastest = min(r["latency_ms"]["median"] for _, r in exact) / div
        for target in (ax, band):
            target.axvline(fastest, color="#444444", ls=":", lw=1.0, zorder=1)
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    ax.annotate("error ≥ 1:\nworse than\nzeros", (1.0, 1.0), xycoords=trans, xytext=(4, 2),
                textcoords="offset points", va="bottom", fontsize=8, color="#d62728", annotation_clip=False)
    band.set_ylabel("exact", rotation=0, ha="right", va="center")
    if not exact:
        band.text(0.5, 0.5, f"no exact result at L={fmt_len(L)}", transform=band.transAxes, ha="center",
                  va="center", fontsize=8, color=GUIDE)
    ax.set_ylabel("relative L2 error vs full softmax attention, log scale")
    band.set_xlabel(f"median latency ({unit}), log scale")
    fig.suptitle(f"Accuracy vs latency at L={fmt_len(L)}\n{subtitle(sc, ctx.device_name(sc['device']), labels.shared)}",
                 fontsize=11)
    if labels.fixed_params:
        fig.text(0.0, 0.0, wrap("Fixed parameters: " + labels.fixed_params, 120), ha="left", va="top", fontsize=8,
                 color="#555555")
    fig.canvas.draw()  # the layout is final: place the labels in display space, then freeze it
    for target, (xy, texts, colors) in marks.items():
        place_labels(target, xy, texts, colors)
    fig.set_layout_engine("none")
    png, svg = save(fig, ctx.out_dir, f"pareto-{slug(tuple(sc[k] for k in SCENARIO_KEYS))}")
    return Chart(f"Accuracy vs latency at L={fmt_len(L)} ({sc['mode']}, {sc['dtype']}, {len(pts)} points)", png, svg,
                 PARETO_HOW)


def _frontier(xy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both latency and error, by increasing latency."""
    out, best = [], float("inf")
    for x, y in sorted(xy):
        if y < best:
            out.append((x, y))
            best = y
    return out
