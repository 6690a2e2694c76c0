"""Report charts a reader can read: labels say only what differs, series are distinguishable, big
charts become small multiples, legends and labels stay off the data area (measured with
matplotlib's get_window_extent), point labels do not overlap, and — in headless Chromium — no two
text labels of a chart overlap and no chart overflows its container (measured from the DOM)."""

import itertools
import json
import re
import subprocess

import numpy as np
import pytest
from matplotlib.text import Text
from test_report import CHROMIUM, header, record, write_results

from attnbench.cli import main
from attnbench.report import charts as C
from attnbench.report.analysis import series
from attnbench.report.labels import chart_labels
from attnbench.report.model import Context
from attnbench.report.placement import place_labels
from attnbench.report.style import Palette, new_figure, time_unit

PERF = {"chunk": 64, "eps": 0.0, "nb_features": 256, "orthogonal": True, "seed": 0}


def issue_records() -> list[dict]:
    """A mixed run: flash (3 backends), gqa (5, Hkv=2) and performer (3, default params), 1k..4k."""
    recs = []
    for L in (1024, 2048, 4096):
        f = L / 1024
        for b, c in (("sdpa-flash", 60), ("flex", 120), ("eager", 70)):
            recs.append(record("flash", b, L, c * f * f, error={"vs": "reference", "rel_l2": 3e-7}))
        for b, c in (("eager", 170), ("sdpa", 40), ("sdpa-math", 240), ("sdpa-flash", 58), ("flex", 110)):
            recs.append(record("gqa", b, L, c * f * f, kv_heads=2, error={"vs": "reference", "rel_l2": 3e-7}))
        for b, c in (("eager", 90), ("chunked", 130), ("flex", 150)):
            recs.append(
                record("performer", b, L, c * f, params=PERF, error={"vs": "reference", "rel_l2": 0.4 + f / 10})
            )
    for r in recs:
        ms = r["latency_ms"]["median"]
        r["samples_ms"] = [ms * k for k in (0.9, 1.0, 1.1, 1.3)] if r["seq_q"] < 4096 else [ms]
        r["latency_ms"]["n"] = len(r["samples_ms"])
    return recs


def ctx_for(recs, tmp_path, baseline="flash:eager") -> tuple[Context, list]:
    everything = series(recs)
    return Context((header(),), tmp_path, Palette([s.name for s in everything]), baseline), everything


# ---------------------------------------------------------------- labels and looks
def test_labels_say_only_what_differs():
    recs = issue_records()
    recs.append(record("performer", "eager", 1024, 50, params={**PERF, "nb_features": 64}))
    lab = chart_labels(series(recs))
    names = sorted(lab.names.values())
    assert "flash:eager" in names and "gqa:sdpa Hkv=2" in names
    assert {"performer:eager nb_features=256", "performer:eager nb_features=64"} <= set(names)
    assert "chunk=64" in lab.fixed_params and "nb_features" not in lab.fixed_params  # shared ones go below
    only_gqa = chart_labels([s for s in series(recs) if s.axes["variant"] == "gqa"])
    assert only_gqa.shared == "Hkv=2" and all("Hkv" not in n for n in only_gqa.names.values())


def test_no_two_series_share_a_look_up_to_24():
    names = [f"v{i}:b{j}" for i in range(6) for j in range(4)]  # 6 variants × 4 backends
    looks = Palette(names).looks(names)
    assert len({(lk.color, lk.marker, lk.ls) for lk in looks.values()}) == 24
    assert len({looks[f"v{i}:b0"].color for i in range(6)}) == 6  # colour by variant
    assert len({(looks[f"v0:b{j}"].marker, looks[f"v0:b{j}"].ls) for j in range(4)}) == 4  # style by backend
    same = [f"perf:eager nb={k}" for k in range(24)]  # one variant, one backend, 24 parameter values
    assert len({tuple(vars(lk).values()) for lk in Palette(same).looks(same).values()}) == 24


@pytest.mark.parametrize("lo,hi,unit", [(0.01, 0.5, "µs"), (3, 700, "ms"), (900, 30000, "s")])
def test_time_unit_per_chart(lo, hi, unit):
    assert time_unit(lo, hi)[1] == unit


def test_facets_hold_at_most_six_series_and_the_baseline():
    recs = [
        record(f"v{i}", b, L, 1.0 + i, error={"vs": "reference", "rel_l2": 0.5 if i > 3 else 1e-7})
        for i in range(8)
        for b in ("eager", "flex", "sdpa")
        for L in (256, 512)
    ]
    recs += [record("mha", "eager", L, 9.0) for L in (256, 512)]
    group = [s for s in series(recs) if s.ok()]
    panels = C.facets(group, "mha:eager")
    assert len(panels) > 1 and all(len(p) <= C.MAX_SERIES for _, p in panels)
    assert all(any(s.name == "mha:eager" for s in p) for _, p in panels)
    assert {id(s) for _, p in panels for s in p} == {id(s) for s in group}
    assert any(t.startswith("approximations") for t, _ in panels) and any(t.startswith("exact") for t, _ in panels)


# ---------------------------------------------------------------- layout, measured by matplotlib
def _capture(monkeypatch) -> list:
    figs = []

    def keep(fig, out_dir, stem):
        fig.canvas.draw()
        figs.append(fig)
        return out_dir / f"{stem}.png", out_dir / f"{stem}.svg"

    monkeypatch.setattr(C, "save", keep)
    return figs


def _overlaps(a, b, tol=1.0) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


@pytest.mark.parametrize("kind", ["latency", "memory", "tflops"])
def test_legend_and_margin_labels_stay_off_the_data_area(tmp_path, monkeypatch, kind):
    figs = _capture(monkeypatch)
    recs = [r for r in issue_records() if r["variant"] != "gqa"]  # 6 series: one panel
    ctx, everything = ctx_for(recs, tmp_path)
    assert C.curve_chart(ctx, everything[0].scenario(), everything, C.SPECS[kind]) is not None
    fig = figs[0]
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    area = ax.get_window_extent(r)
    full = fig.get_tightbbox(r).transformed(fig.dpi_scale_trans)  # what bbox_inches="tight" saves
    assert area.width * area.height >= 0.6 * full.width * full.height, "plot area under 60 % of the saved figure"
    assert not _overlaps(ax.get_legend().get_window_extent(r), area)
    margin = [t for t in ax.texts if t.get_text().startswith(("O(L", "GEMM"))]
    assert len(margin) == (2 if kind != "tflops" else 1)
    for t in margin:
        box = t.get_window_extent(r)
        assert box.x0 >= area.x1 - 1, f"{t.get_text()!r} drawn over the data area"
    for a, b in itertools.combinations(margin, 2):
        assert not _overlaps(a.get_window_extent(r), b.get_window_extent(r))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "performer:eager" in labels and not any("nb_features" in x for x in labels)
    assert "flash:eager (baseline)" in labels


def test_many_series_become_small_multiples(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    ctx, everything = ctx_for(issue_records(), tmp_path)
    chart = C.curve_chart(ctx, everything[0].scenario(), everything, C.SPECS["latency"])
    assert "Small multiples: 3 panels" in chart.how
    fig = figs[0]
    r = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_legend()]
    assert len(panels) == 3
    for ax in panels:
        assert len(ax.get_legend().get_texts()) <= C.MAX_SERIES
        assert not _overlaps(ax.get_legend().get_window_extent(r), ax.get_window_extent(r))
        for other in panels:
            if other is not ax:
                assert not _overlaps(ax.get_legend().get_window_extent(r), other.get_window_extent(r))
    ylims = {ax.get_ylim() for ax in panels}
    assert len(ylims) == 1, "small multiples must share their axes"


def test_point_labels_do_not_overlap(tmp_path):
    fig, axes = new_figure(6, 4)
    ax = axes[0][0]
    rng = np.random.default_rng(0)
    pts = [(float(x), float(y)) for x, y in zip(rng.uniform(1, 3, 14), rng.uniform(1, 2, 14))]
    ax.plot(*zip(*pts), "o")
    ax.set_xlim(0, 4)
    ax.set_ylim(0, 3)
    fig.canvas.draw()
    anns, crowded = place_labels(ax, pts, [f"series-{i}:backend" for i in range(14)], ["k"] * 14)
    r = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(a, r) for a in anns]  # the text only, not a leader line
    assert crowded == 0
    assert not any(_overlaps(a, b) for a, b in itertools.combinations(boxes, 2))


# ---------------------------------------------------------------- the page, measured by Chromium
PROBE = """<script>window.addEventListener('load', function () {
  var out = {charts: 0, overlaps: [], overflow: [], texts: 0};
  document.querySelectorAll('.chart').forEach(function (box, k) {
    var svg = box.querySelector('svg'); out.charts += 1;
    var b = box.getBoundingClientRect(), s = svg.getBoundingClientRect();
    if (s.right > b.right + 1 || s.left < b.left - 1 || b.right > document.documentElement.clientWidth + 1)
      out.overflow.push(k);
    var rs = Array.from(svg.querySelectorAll('text')).filter(function (t) { return t.textContent.trim(); })
      .map(function (t) { var r = t.getBoundingClientRect();
                          return [r.left, r.top, r.right, r.bottom, t.textContent]; });
    out.texts += rs.length;
    for (var i = 0; i < rs.length; i++) for (var j = i + 1; j < rs.length; j++) {
      var a = rs[i], c = rs[j];
      if (Math.min(a[2], c[2]) - Math.max(a[0], c[0]) > 1 && Math.min(a[3], c[3]) - Math.max(a[1], c[1]) > 1)
        out.overlaps.push([k, a[4], c[4]]);
    }
  });
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def chromium_probe(html, tmp_path, width=1400) -> dict:
    copy = tmp_path / "probe.html"
    copy.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'p'}",
        f"--window-size={width},2000",
        "--virtual-time-budget=5000",
        "--dump-dom",
        copy.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, f"probe did not run: {dom[-300:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


@pytest.mark.slow
def test_report_page_has_no_overlapping_labels_and_no_overflow(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium; .ci/run installs it): DOM not measured")
    res = write_results(tmp_path / "r.jsonl", issue_records())
    assert main(["report", str(res), "--out", str(tmp_path / "rep")]) == 0
    html = tmp_path / "rep" / "report.html"
    for width in (1400, 900):
        got = chromium_probe(html, tmp_path, width)
        assert got["charts"] == len(list((tmp_path / "rep" / "charts").glob("*.svg")))
        assert got["texts"] > got["charts"] * 5  # the charts' text is text, so it was measured
        assert got["overflow"] == [], f"charts wider than their container at {width}px: {got['overflow']}"
        assert got["overlaps"] == [], f"overlapping labels at {width}px: {got['overlaps'][:5]}"


def test_one_variant_gets_one_marker_per_backend():
    backends = [
        "chunked",
        "eager",
        "flex",
        "grouped",
        "peer:x",
        "sdpa",
        "sdpa-cudnn",
        "sdpa-efficient",
        "sdpa-flash",
        "sdpa-math",
        "triton",
    ]
    pal = Palette([f"{v}:{b}" for v in ("flash", "gqa", "performer") for b in backends])
    names = [f"gqa:{b}" for b in backends]
    assert len({pal.looks(names)[n].marker for n in names}) == len(backends)


# ---------------------------------------------------------------- history across runs
def test_history_draws_cases_across_runs_regressions_first(tmp_path, monkeypatch):
    from attnbench.report import history as Hm

    figs = []
    monkeypatch.setattr(Hm, "save", lambda fig, d, stem: (figs.append(fig), (d / f"{stem}.png", d / f"{stem}.svg"))[1])
    base = [r for r in issue_records() if r["variant"] == "flash"]
    cur = json.loads(json.dumps(base))
    for r in cur:
        if r["backend"] == "flex":  # a regression of one series
            r["latency_ms"]["median"] *= 1.5
            r["samples_ms"] = [x * 1.5 for x in r["samples_ms"]]
    ctx, _ = ctx_for(base, tmp_path)
    sec = Hm.history_section(ctx, ["base.jsonl", "cur.jsonl"], [base, cur])
    assert sec.charts and sec.charts[0].caption == "History of 3 series across 2 runs"
    titles = [ax.get_title(loc="left") for ax in figs[0].axes if ax.get_visible()]
    assert titles[0] == "flash:flex" and len(titles) == 3  # the series that moved comes first
    assert Hm.history_section(ctx, ["only.jsonl"], [base]) is None


def test_history_dir_usage_errors(tmp_path, capsys):
    assert main(["report", "--history", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", "--history", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no .jsonl" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
