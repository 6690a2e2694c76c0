"""Build a report from results files: tables (CSV), charts (PNG + SVG), report.md and report.html.

Layout of the output directory:
    report.md, report.html       the report (the HTML embeds every image; it opens offline)
    charts/*.png, charts/*.svg   one file pair per chart
    tables/*.csv                 scaling, measurements, crossovers, not_run, environment
Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

from pathlib import Path

from attnbench.core import correctness, results
from attnbench.core.errors import UsageError
from attnbench.report import analysis, verdicts
from attnbench.report import tables as T
from attnbench.report.catalogue import annotate
from attnbench.report.charts import SPECS, curve_chart, scenarios
from attnbench.report.model import Context, Section, Table
from attnbench.report.special import gqa_charts, pareto_charts
from attnbench.report.style import Palette
from attnbench.report.wrong import not_checked_line
from attnbench.report.wrong import section as wrong_section

DEFAULT_BASELINE = "mha:eager"


def load_runs(paths: list[str | Path]) -> tuple[list[dict], list[list[dict]]]:
    """(headers, records of each file) of several results files, in order; each record annotated
    with what the header's catalogue says of its variant (report/catalogue.py)."""
    if not paths:
        raise UsageError("no results files given; accepted: one or more .jsonl files written by `attnbench run`")
    headers, runs = [], []
    for p in paths:
        h, recs = results.read(p)
        headers.append(h)
        runs.append(annotate(h, recs))
    return headers, runs


def load(paths: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """(headers, records) of several results files, in order (a later file's case replaces an earlier one)."""
    headers, runs = load_runs(paths)
    return headers, [r for recs in runs for r in recs]


def check_baseline(records: list[dict], baseline: str | None) -> tuple[str, str | None]:
    """(baseline, note): an explicit baseline must be in the data. The default is run's: mha:eager
    if it ran, else the first exact variant's eager backend that ran (the materialised textbook
    attention); with neither, a note says there are no speedups."""
    names = sorted({f"{r['variant']}:{r['backend']}" for r in records if r["status"] == "ok"})
    if baseline is None:
        found = default_baseline(records)
        note = None if found else \
            f"No baseline: neither {DEFAULT_BASELINE} nor an exact variant's eager backend ran, so no " \
            f"speedups (pick one with --baseline)."
        return found or DEFAULT_BASELINE, note
    baseline = analysis.parse_baseline(baseline)
    if baseline not in names:
        raise UsageError(f"baseline '{baseline}' has no ok records in the data; accepted: {', '.join(names) or 'none'}")
    return baseline, None


def default_baseline(records: list[dict]) -> str | None:
    """mha:eager if it ran, else the first exact variant's (catalogue: `_exact`) eager backend that ran."""
    ran = list(dict.fromkeys(f"{r['variant']}:{r['backend']}" for r in records if r["status"] == "ok"))
    if DEFAULT_BASELINE in ran:
        return DEFAULT_BASELINE
    exact = {r["variant"] for r in records if r.get("_exact")}
    return next((n for n in ran if n.endswith(":eager") and n.split(":")[0] in exact), None)


def build_report(paths: list[str | Path], out: Path, baseline: str | None = None,
                 history: Path | None = None, patterns: bool = False, recommender=None) -> list[Path]:
    """Write the report into the directory `out`; returns every file written (under `out`). With
    several files (or a `history` directory, its files oldest first, before `paths`), a history
    section draws each case across the runs; the other sections show each case's latest run.

    The report is built in a temporary sibling, under `out`'s lock (safe_io), and renamed into
    place only when complete: a failure (a full disk, bad records) leaves no partial directory
    and an earlier report at `out` as it was. An existing `out` is replaced as a whole, so it
    must be a report directory (holding report.md) or empty. `patterns` adds the pattern gallery,
    which draws the variants' masks with torch (the rest of the report imports no torch).
    `recommender(records, headers) -> picks` (gate/recommend.for_report) fills the "For your model"
    section's recommendation (report/ does not import gate/)."""
    from attnbench.core.safe_io import atomic_dir, hold_lock
    from attnbench.report.history import history_files

    paths = [*(history_files(history) if history else []), *paths]
    headers, runs = load_runs(paths)
    records = [r for recs in runs for r in recs]
    baseline, base_note = check_baseline(correctness.split(records)[0], baseline)
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.md").exists():
        raise UsageError(f"--out '{out}' is a directory that holds no report; give a new directory or an "
                         f"earlier report's (it is replaced as a whole)")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write --out '{out}': directory '{out.parent}' does not exist")
    with hold_lock(out), atomic_dir(out) as tmp:
        written = _build(paths, tmp, headers, runs, records, baseline, base_note, patterns, recommender)
    return [out / p.relative_to(tmp) for p in written]


def _build(paths, out: Path, headers, runs, records, baseline, base_note, patterns: bool,
           recommender=None) -> list[Path]:
    from attnbench.report.history import history_section

    (out / "charts").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    records, wrong = correctness.split(records)  # a wrong output never enters a speed claim (core/correctness.py)
    runs = [correctness.split(recs)[0] for recs in runs]
    everything = analysis.series(records)
    ctx = Context(tuple(headers), out / "charts", Palette(sorted({T.tag(s) for s in everything}
                                                                | {s.name for s in everything})), baseline)
    scaling = _scaling(ctx, everything, records, out, base_note)
    sections = [_story(ctx, everything, records, base_note, scaling, wrong), scaling,
                _throughput(ctx, everything, records, out), _crossovers(records, out, ctx.baseline),
                *_special(ctx, everything, records, patterns), *_peers(headers, records, out), _not_run(records, out),
                _environment(headers, out, paths)]
    from attnbench.report.formodel import model_section

    mine = model_section(records, recommender and (lambda recs: recommender(recs, headers)))
    if mine:
        sections.insert(1, mine)
    bad = wrong_section(wrong, lambda title, cols, rows, name: _table(title, cols, rows, out, name))
    if bad:
        sections.insert(1, bad)
    hist = history_section(ctx, [Path(p).name for p in paths], runs)
    if hist:
        sections.insert(1, hist)
    from attnbench.report.html import write_html
    from attnbench.report.markdown import write_markdown

    md, html = out / "report.md", out / "report.html"
    title = f"attnbench report: {', '.join(Path(p).name for p in paths[:4])}" + \
        (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
    write_markdown(md, title, sections, out)
    write_html(html, title, sections, out)
    written = [md, html]
    for sec in sections:
        written += [p for c in sec.charts for p in (c.png, c.svg)] + [t.csv for t in sec.tables if t.csv]
    return written


def _story(ctx: Context, everything, records, base_note: str | None, scaling: Section,
           wrong: list[tuple[dict, str]] = ()) -> Section:
    """"What this run shows": the findings (report/story.py), then latency and peak memory of the
    scenario with the most series, drawn for the baseline and the series the findings name (at most
    MAX_SERIES, so one panel each); when that is every series of the scenario, the scaling
    section's own charts are moved here instead of drawn twice."""
    from dataclasses import replace

    from attnbench.report.charts import MAX_SERIES, slug
    from attnbench.report.story import key_series, story

    sec = Section("What this run shows", story(records, ctx.baseline, base_note, wrong), lead=True)
    scn, labels = key_series(records, ctx.baseline, MAX_SERIES)
    names = analysis.labels_of(everything)
    group = [s for s in everything if s.scenario() == scn and s.ok()]
    chosen = sorted((s for s in group if names[id(s)] in labels), key=lambda s: labels.index(names[id(s)]))
    if not chosen:
        return sec
    if len(chosen) == len(group):
        sec.charts = [c for c in scaling.charts if c.png.stem.split("-", 1)[-1] == slug(scn)][:2]
        scaling.charts = [c for c in scaling.charts if c not in sec.charts]
        scaling.text.append("The latency and peak-memory charts of the scenario with the most series open the "
                            "report (What this run shows).")
        return sec
    for kind in ("latency", "memory"):
        chart = curve_chart(ctx, scn, chosen, SPECS[kind], stem="story-")
        if chart:
            sec.charts.append(replace(chart, caption=f"{chart.caption.split(' (')[0]} ({len(chosen)} of "
                                                     f"{len(group)} series: the baseline, those the findings name "
                                                     f"and the fastest others; all are in Scaling)"))
    return sec


def _table(title, columns, rows, out: Path, name: str, note: str = "") -> Table:
    csv = out / "tables" / f"{name}.csv"
    T.write_csv(csv, [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    return Table(title, columns, tuple(rows), csv, note)


def _environment(headers: list[dict], out: Path, paths) -> Section:
    keys: list[str] = []
    for h in headers:
        keys += [k for k in (h.get("env") or {}) if k not in keys]
    rows = [{"key": k, **{Path(p).name: _short((h.get("env") or {}).get(k)) for p, h in zip(paths, headers)}}
            for k in keys]
    for p, h in zip(paths, headers):
        rows_ref = (h.get("refs") or {})
        for dtype, g in (rows_ref.get("gemm") or {}).items():
            _put(rows, f"GEMM {g.get('n')}² {dtype}", Path(p).name, T.fmt_flops(g["flops_per_s"] / 1e12))
        if rows_ref.get("copy"):
            _put(rows, "copy bandwidth", Path(p).name, f"{rows_ref['copy']['bytes_per_s'] / 1e9:.3g} GB/s")
        _put(rows, "created", Path(p).name, h.get("created"))
        _put(rows, "command", Path(p).name, " ".join(h.get("command") or []))
    cols = (("key", "what"), *((Path(p).name, Path(p).name) for p in paths))
    sec = Section("Environment", ["Measured on (from each results file's header; GEMM and copy are the "
                                  "in-run references the roofline uses):"])
    sec.tables.append(_table("environment", cols, rows, out, "environment"))
    return sec


def _put(rows: list[dict], key: str, col: str, value) -> None:
    for r in rows:
        if r["key"] == key:
            r[col] = value
            return
    rows.append({"key": key, col: value})


def _short(v) -> str:
    return "-" if v is None else str(v)


def _scaling(ctx: Context, everything, records, out: Path, base_note: str | None) -> Section:
    sec = Section("Scaling with sequence length")
    sec.text.append(
        f"Exponents are fitted to median latency and peak memory against L (y = a + c·L^k with a fixed "
        f"offset a from 5 lengths, else c·L^k; the lengths used are in the notes), with 95 % Student-t "
        f"intervals. Each (variant, backend) pair is judged against its own claim: *agrees* when the "
        f"interval contains the claimed exponent (±{verdicts.MODEL_TOL} for lower-order terms) and "
        f"excludes every other class of O(1), O(L), O(L·√L), O(L²), O(L³); *differs* when it excludes "
        f"the claim; *inconclusive* otherwise (the note says which classes it covers and why it is "
        f"wide); *too few lengths* under {verdicts.MIN_LENGTHS} lengths. Baseline for speedups and "
        f"crossovers: **{ctx.baseline}** (matched on "
        f"device, mode, dtype, B, H, D, causal and L).")
    if base_note:
        sec.text.append(base_note)
    rows = T.scaling_display(analysis.scaling_table(records, ctx.baseline))
    sec.tables.append(_table("scaling", T.SCALING_COLUMNS, rows, out, "scaling"))
    for kind in ("latency", "memory"):
        for scn, group in scenarios(everything).items():
            chart = curve_chart(ctx, scn, group, SPECS[kind])
            if chart:
                sec.charts.append(chart)
            else:
                sec.skipped.append(f"{SPECS[kind].what}: no {kind} values for {T.scenario_text(group[0].axes)}.")
    if not rows:
        sec.skipped.append("Scaling charts and table: no case ran (status ok) in the data.")
    return sec


def _throughput(ctx: Context, everything, records, out: Path) -> Section:
    sec = Section("Throughput, roofline and speedups",
                  ["Achieved FLOP/s and GB/s of each case and its fraction of the run's roofline "
                   "(min(in-run GEMM FLOP/s, arithmetic intensity × in-run copy bandwidth)); speedup and "
                   f"memory saving are against {ctx.baseline} at the same shape."])
    for scn, group in scenarios(everything).items():
        chart = curve_chart(ctx, scn, group, SPECS["tflops"])
        if chart:
            sec.charts.append(chart)
    if not sec.charts:
        sec.skipped.append("Throughput chart: no case with achieved FLOP/s in the data.")
    unchecked = not_checked_line(records)
    if unchecked:
        sec.text.append(unchecked)
    rows = T.measurement_display(T.measurements(records, ctx.baseline))
    sec.tables.append(_table("measurements", T.measurement_columns(rows), rows, out, "measurements",
                             T.gpu_note(rows)))
    return sec


def _crossovers(records, out: Path, baseline: str) -> Section:
    rows = T.with_scenario(T.crossover_table(records, baseline))
    sec = Section("Crossovers", ["Where one series passes another within the swept lengths, interpolated in "
                                 "log-log between measured lengths. Only pairs that matter are listed: two backends "
                                 f"of one variant, an approximation against an exact series, or a series against "
                                 f"the baseline {baseline}; pairs that never cross are left out."])
    if rows:
        sec.tables.append(_table("crossovers", T.CROSSOVER_COLUMNS, rows, out, "crossovers"))
    else:
        sec.skipped.append("Crossovers: no pair that matters crosses within the swept lengths "
                           "(or no two series share two or more lengths).")
    return sec


def _special(ctx: Context, everything, records, patterns: bool) -> list[Section]:
    """GQA/MQA, accuracy-vs-latency and (with `patterns`) the pattern gallery, each a section."""
    parts = [("GQA and MQA", gqa_charts(ctx, everything)), ("Accuracy vs latency", pareto_charts(ctx, everything))]
    if patterns:
        from attnbench.report.gallery import gallery  # the pictures come from the variants' masks (torch)

        variants: dict[str, dict] = {}
        for r in records:
            if r["status"] == "ok":
                variants.setdefault(r["variant"], r.get("params") or {})
        parts.append(("Pattern gallery", gallery(ctx, variants)))
    return [Section(name, charts=charts, skipped=skipped) for name, (charts, skipped) in parts]


def _peers(headers: list[dict], records, out: Path) -> list[Section]:
    """The targets of suites/peers.toml, only in a report of the peers suite (a header's command
    names it): they are the project's own goals, not a user's question."""
    from attnbench.report.peers import peer_targets, peers_suite_named, peers_suite_ran

    if not peers_suite_named(headers):
        return []
    refs = next((h.get("refs") for h in headers if h.get("refs")), None)
    targets = peer_targets(records, refs, peers_suite_ran(headers, records))
    if all(t.not_run and t.measured == "–" for t in targets):  # nothing of it measured: no section
        return []
    rows = [{"number": t.number, "what": t.what, "goal": t.goal, "measured": t.measured,
             "result": t.mark + (f" ({t.note})" if t.note else "")} for t in targets]
    cols = (("number", "#"), ("what", "target"), ("goal", "goal"), ("measured", "measured (ratios in one run)"),
            ("result", "result"))
    return [Section("Against the peers", ["Targets of suites/peers.toml, each a ratio measured in this run."],
                    tables=[_table("against the peers", cols, rows, out, "peers")])]


def _not_run(records, out: Path) -> Section:
    rows = T.with_scenario(T.not_run(records))
    sec = Section("Not run or failed", ["Series where no length ran (unsupported, unavailable, skipped, failed), "
                                        "then every case that was tried and failed (oom, timeout, error, killed) "
                                        "in a series that ran at other lengths, with the first line of its reason."])
    if rows:
        sec.tables.append(_table("not run", T.NOT_RUN_COLUMNS, rows, out, "not_run"))
    else:
        sec.text.append("Every series ran at least one length, and no case failed.")
    return sec
