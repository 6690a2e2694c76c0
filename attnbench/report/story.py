"""The report's opening section, "What this run shows": a few sentences built from the data, then
the charts that carry them.

Every sentence is computed from the tables the report prints below it, never written by hand:
- first, the cases left out as wrong (core/correctness.py: their output is beyond its budget);
- per scenario, the series furthest ahead of the baseline in speed and in memory, at the longest
  length both ran (a ratio of medians; a case flagged noisy or contended says so); an
  approximation's speedup carries its error against exact attention beside it, and one whose error
  is 1 or more (worse than returning zeros) is not headlined at all;
- the complexity verdicts: which claims the fits confirm (memory O(L) against the baseline's
  O(L²)), which they contradict, and how many are undecided and why (too few lengths, wide intervals);
- the crossovers among the pairs that matter;
- every case that failed (named; its reason is in "Not run or failed"), the series that did not run,
  and the measurement flags (high_variance, low_samples, contended, above_roof).
Honest limits: a speedup is a ratio of two medians of one run; the sentence does not claim an
interval (the gate's `compare`/`ab` does). Only the first MAX_SCENARIOS scenarios get sentences.
"""

from __future__ import annotations

from attnbench.core.tolerance import tolerance
from attnbench.report import tables as T
from attnbench.report.analysis import FAILURES, SCENARIO_KEYS, fmt_len, length, scaling_table, series

MAX_SCENARIOS = 3
APPROX_HEADLINE_MAX = 1.0  # relative L2 against exact attention: 1 is what an all-zero output scores
NOISY = ("high_variance", "low_samples", "contended")


def story(records: list[dict], baseline: str, base_note: str | None,
          wrong: list[tuple[dict, str]] = ()) -> list[str]:
    """The sentences of "What this run shows", most important first. `records` are the ones a speed
    claim may use; `wrong` (record, reason) those left out as wrong (core/correctness.split), named first."""
    rows = scaling_table(records, baseline)
    scenarios: dict[str, list[dict]] = {}
    for r in rows:
        scenarios.setdefault(T.scenario_text(r), []).append(r)
    out = _wrong(wrong)
    for scn, group in list(scenarios.items())[:MAX_SCENARIOS]:
        prefix = f"{scn}: " if len(scenarios) > 1 else ""
        out += [prefix + s for s in _ratios(group, baseline, records)]
    if base_note:
        out.append(base_note)
    out += _verdicts(rows)
    out += _accuracy(records)
    out += _crossings(records, baseline)
    out += _failures(records)
    out += _flags(records)
    if not rows:
        out.insert(0, "No case ran (status ok): there is nothing to compare.")
    return out


def _wrong(wrong) -> list[str]:
    """One sentence naming the wrong records left out of every figure below (their reasons are in
    "Wrong results")."""
    if not wrong:
        return []
    named = ", ".join(f"{r['variant']}:{r['backend']} {r['dtype']} at {fmt_len(length(r))} ({why})"
                      for r, why in list(wrong)[:3])
    more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
    n = len(wrong)
    return [f"{n} case{'s' if n > 1 else ''} computed a wrong output and {'are' if n > 1 else 'is'} left out of "
            f"every speedup, verdict and chart below: {named}{more} (see \"Wrong results\")."]


def _noisy(records: list[dict], row: dict, at: int | None) -> list[str]:
    """The noise flags of the records a ratio at length `at` is made of (the series' and the baseline's)."""
    names = {row["name"], row["baseline"]}
    flags = {f for r in records if f"{r['variant']}:{r['backend']}" in names and r["status"] == "ok"
             and length(r) == at and r["mode"] == row["mode"] for f in (r.get("flags") or []) if f in NOISY}
    return sorted(flags)


def inexact(err: float | None, dtype: str, seq_k: int) -> bool:
    """An error against exact attention beyond what exact attention itself may carry in this dtype
    at this length (core/tolerance.py): bfloat16 SDPA's 2e-3 is exact, linformer's 0.7 is not."""
    return err is not None and err > tolerance(dtype, seq_k)


def _approx_error(records: list[dict], row: dict, at: int | None) -> float | None:
    """The series' error against exact attention at `at` when it is an approximation's (inexact)."""
    for r in T.measurements(records, "-"):
        if r["series"] == row["series"] and r["L"] == at and all(r[k] == row[k] for k in SCENARIO_KEYS):
            err = r["full_rel_l2"] if r["full_rel_l2"] is not None else r["rel_l2"]
            return err if inexact(err, r["dtype"], r["seq_k"]) else None
    return None


def _ratio_text(x: float, more: str, less: str) -> str:
    return f"{x:.3g}× {more}" if x >= 1 else f"{1 / x:.3g}× {less}"


def _picks(group: list[dict], records: list[dict]) -> list[tuple[dict, float | None]]:
    """(row, its error if an approximation) of the fastest exact series, the fastest approximation
    and, if another, the leanest series of one scenario, among those rated against the baseline."""
    rated = [r for r in group if not r["is_baseline"] and r["speedup"] is not None]
    approx = {id(r): _approx_error(records, r, r["compared_at"]) for r in rated}
    exact = [r for r in rated if approx[id(r)] is None]
    # an approximation's speedup is a headline only beside its error, and only when its output is
    # closer to exact attention than returning zeros (relative L2 < 1); worse ones are named by _accuracy
    inexact = [r for r in rated if approx[id(r)] is not None and approx[id(r)] < APPROX_HEADLINE_MAX]
    picks = [max(rs, key=lambda r: r["speedup"]) for rs in (exact, inexact) if rs]
    eligible = exact + inexact
    lean = max((r for r in eligible if r["mem_saving"] is not None), key=lambda r: r["mem_saving"], default=None)
    if lean is not None and all(lean is not p for p in picks):
        picks.append(lean)
    return [(r, approx[id(r)]) for r in picks]


def key_series(records: list[dict], baseline: str, limit: int = 6) -> tuple[tuple, list[str]]:
    """(scenario, series labels) of the story's charts: the scenario with the most series, its
    baseline and the series the findings name, then the fastest others, at most `limit`."""
    groups: dict[tuple, list[dict]] = {}
    for r in scaling_table(records, baseline):
        groups.setdefault(tuple(r[k] for k in SCENARIO_KEYS), []).append(r)
    if not groups:
        return (), []
    scn, group = max(groups.items(), key=lambda kv: len(kv[1]))
    named = [r["series"] for r in group if r["is_baseline"]] + [r["series"] for r, _ in _picks(group, records)]
    rest = sorted((r for r in group if r["series"] not in named), key=lambda r: -(r["speedup"] or 0.0))
    return scn, list(dict.fromkeys(named + [r["series"] for r in rest]))[:limit]


def _ratios(group: list[dict], baseline: str, records: list[dict]) -> list[str]:
    """The fastest exact series, the fastest approximation and, if another, the leanest series,
    each against the baseline at the longest length both ran."""
    out = []
    for r, err in _picks(group, records):
        at = r["compared_at"]
        text = f"{r['series']} is {_ratio_text(r['speedup'], 'faster', 'slower')} than {baseline} at {fmt_len(at)}"
        if err is None and r["speedup"] < 1 and r is _picks(group, records)[0][0]:
            text = (f"No exact series is faster than {baseline} at {fmt_len(at)}: the closest, {r['series']}, "
                    f"is {_ratio_text(r['speedup'], 'faster', 'slower')}")
        if r["mem_saving"] is not None:
            text += f" and uses {_ratio_text(r['mem_saving'], 'less', 'more')} memory"
        if err is not None:
            text += f" — an approximation, relative L2 error {err:.2g} against exact attention there"
        noisy = _noisy(records, r, at)
        text += f" (noisy: {', '.join(noisy)}; indicative only)." if noisy else "."
        out.append(text)
    return out


def _verdicts(rows: list[dict]) -> list[str]:
    """What the fits confirm (per claim: "memory O(L) for flash:sdpa; O(L²) for flash:eager"),
    contradict and leave open: at most four sentences."""
    out, differ = [], []
    for metric, pre, claim_key in (("latency", "time", "time_claim"), ("memory", "mem", "memory_claim")):
        agree = [r for r in rows if r[f"{pre}_verdict"] == "agrees"]
        differ += [f"{r['series']} {metric} fits {r[f'{pre}_fit']} against {r[claim_key]}"
                   for r in rows if r[f"{pre}_verdict"] == "differs"]
        if agree:
            by: dict[str, list[dict]] = {}
            for r in agree:
                by.setdefault(r[claim_key].split(" (")[0], []).append(r)
            out.append(f"{metric.capitalize()} confirmed (the fitted exponent's 95 % interval excludes the other "
                       f"classes): " + "; ".join(f"{c} for {_names(rs)}" for c, rs in sorted(by.items())) + ".")
    if differ:
        out.append("Differs from its claim: " + "; ".join(differ[:3])
                   + (f" and {len(differ) - 3} more" if len(differ) > 3 else "") + ".")
    few = [r for r in rows if r["time_verdict"] == "too few lengths"]
    wide = [r for r in rows if r["time_verdict"] == "inconclusive"]
    undecided = ([f"{len(wide)} inconclusive (an interval too wide to decide: noise or too narrow a range of L; "
                  f"see the scaling table's notes)"] if wide else []) + \
        ([f"{len(few)} with under 4 lengths (sweep more, e.g. --seq 512..8k)"] if few else [])
    if undecided:
        out.append(f"Latency exponent undecided for {len(wide) + len(few)} of {len(rows)} series: "
                   + "; ".join(undecided) + ".")
    return out


def _accuracy(records: list[dict]) -> list[str]:
    """The error against exact attention of each approximation at its longest length (worst first)."""
    worst: dict[str, dict] = {}
    for r in T.measurements(records, "-"):
        err = r["full_rel_l2"] if r["full_rel_l2"] is not None else r["rel_l2"]
        if not inexact(err, r["dtype"], r["seq_k"]):
            continue
        if r["series"] not in worst or r["L"] > worst[r["series"]]["L"]:
            worst[r["series"]] = {**r, "err": err}
    if not worst:
        return []
    rows = sorted(worst.values(), key=lambda r: -r["err"])
    bad = [r for r in rows if r["err"] >= 1]
    text = "Approximation error (relative L2 against exact attention, at the longest length): " + ", ".join(
        f"{r['series']} {r['err']:.2g} at {fmt_len(r['L'])}" for r in rows[:3]) + (" …" if len(rows) > 3 else "")
    if bad:
        text += f"; {len(bad)} at or above 1, worse than returning zeros (their speedups are not headlined)"
    return [text + "."]


def _names(rows: list[dict], limit: int = 4) -> str:
    names = [r["series"] for r in rows]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _crossings(records: list[dict], baseline: str) -> list[str]:
    rows = [r for r in T.crossover_table(records, baseline) if r.get("latency_L")]
    if not rows:
        return []
    shown = "; ".join(f"{r['latency']} ({r['a']} vs {r['b']})" for r in rows[:2])
    more = f"; {len(rows) - 2} more in the Crossovers table" if len(rows) > 2 else ""
    return [f"Crossovers: {shown}{more}."]


def _failures(records: list[dict]) -> list[str]:
    """Every failed case by name and the series that did not run, in one sentence."""
    failed = [r for r in records if r["status"] in FAILURES]
    parts = []
    if failed:
        named = ", ".join(f"{r['variant']}:{r['backend']} at {fmt_len(length(r))} ({r['status']})" for r in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        parts.append(f"{len(failed)} case{'s' if len(failed) > 1 else ''} failed: {named}{more} (the first line "
                     f"of each reason is in \"Not run or failed\")")
    never = [s for s in series(records) if not s.ok() and not any(r["status"] in FAILURES for r in s.records)]
    if never:
        why = sorted({s.records[0]["status"] for s in never})
        names = ", ".join(sorted({s.name for s in never}))
        parts.append(f"{len(never)} series did not run ({', '.join(why)}): {names}")
    return ["; ".join(parts) + "."] if parts else []


def _flags(records: list[dict]) -> list[str]:
    counts: dict[str, int] = {}
    for r in records:
        for f in r.get("flags") or []:
            counts[f] = counts.get(f, 0) + 1
    if not counts:
        return []
    fix = " Contended cases: rerun with --threads 1 on a quiet machine." if "contended" in counts else ""
    return ["Flagged measurements: " + ", ".join(f"{n} {f}" for f, n in sorted(counts.items()))
            + " (see the results schema; a contended or high-variance figure is indicative only)." + fix]
