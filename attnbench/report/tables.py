"""The report's tables as lists of dicts (one per row), and writing them as CSV.

Built on attnbench.report.analysis: series, crossovers and baseline matching. Each table is small
(one row per series, pair of series or ok record), so plain Python over the grouped series.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from attnbench.core.results import atomic_write_text, spread_text
from attnbench.core.tolerance import tolerance
from attnbench.core.units import fmt_bytes as _fmt_bytes
from attnbench.core.units import fmt_joules
from attnbench.report.analysis import (
    FAILURES,
    SCENARIO_KEYS,
    Series,
    baseline_of,
    crossover,
    first_line,
    fmt_len,
    labels_of,
    length,
    series,
)


def not_run(records: list[dict]) -> list[dict]:
    """Series where nothing ran (unsupported, unavailable, skipped, failed: one row, its first
    record's status and reason), then every failed case (oom, timeout, error, killed) of a series
    that ran at other lengths, one row each with the first line of its reason, whole."""
    rows, failed = [], []
    everything = series(records)
    names = labels_of(everything)
    for s in everything:
        if not s.ok():
            r = next((x for x in s.records if x["status"] in FAILURES), s.records[0])
            rows.append(_not_run_row(s, names[id(s)], r, ", ".join(fmt_len(length(x)) for x in s.records)))
        else:
            failed += [_not_run_row(s, names[id(s)], r, fmt_len(length(r))) for r in s.records
                       if r["status"] in FAILURES]
    return rows + failed


def _not_run_row(s: Series, label: str, r: dict, lengths: str) -> dict:
    reason = first_line(r.get("reason")) if r["status"] in FAILURES else r.get("reason")
    return {"series": label, **{k: s.axes[k] for k in SCENARIO_KEYS}, "status": r["status"],
            "reason": reason, "lengths": lengths}


def failed_records(records: list[dict]) -> list[dict]:
    """Every record that was tried and failed (analysis.FAILURES), in file order."""
    return [r for r in records if r["status"] in FAILURES]


def approximate(s: Series) -> bool:
    """From the data, not the registry: an error against full attention was recorded (patterns,
    positional), or the error against the exact reference is beyond what exact attention may carry
    in the record's dtype at its length (core/tolerance.py: bfloat16 SDPA's 2e-3 is exact)."""
    for r in s.ok():
        err = r.get("error") or {}
        if "full_rel_l2" in err or (err.get("rel_l2") or 0.0) > tolerance(r["dtype"], r.get("seq_k") or 1):
            return True
    return False


def pair_matters(a: Series, b: Series, baseline: str) -> bool:
    """A crossover worth a row: two backends of one variant (fused vs eager), an approximation
    against an exact series, or a series against the baseline."""
    return a.axes["variant"] == b.axes["variant"] or approximate(a) != approximate(b) or baseline in (a.name, b.name)


def crossover_table(records: list[dict], baseline: str = "mha:eager", every: bool = False) -> list[dict]:
    """Pairs of series in the same scenario whose latency or peak memory swap order within the swept
    range, among the pairs that matter (pair_matters); every=True: every pair, crossing or not."""
    every_series = series(records)
    names = labels_of(every_series)
    everything = [s for s in every_series if len(s.ok()) >= 2]
    rows = []
    for i, a in enumerate(everything):
        for b in everything[i + 1 :]:
            if a.scenario() != b.scenario() or not (every or pair_matters(a, b, baseline)):
                continue
            lat = crossover(*a.xy("latency"), *b.xy("latency"), names[id(a)], names[id(b)])
            mem = (
                crossover(*a.xy("peak_mem_bytes"), *b.xy("peak_mem_bytes"), names[id(a)], names[id(b)], "smaller")
                if len(a.xy("peak_mem_bytes")[0]) > 1 and len(b.xy("peak_mem_bytes")[0]) > 1
                else {"text": "-"}
            )
            if not every and not lat["points"] and not mem.get("points"):
                continue
            rows.append(
                {
                    "a": names[id(a)],
                    "b": names[id(b)],
                    **dict(zip(SCENARIO_KEYS, a.scenario())),
                    "latency": lat["text"],
                    "memory": mem["text"],
                    "latency_L": ", ".join(f"{L:.0f}" for L, _ in lat["points"]),
                }
            )
    return rows


def tag(s: Series) -> str:
    """The series name, plus Hkv and every param (the palette's key: stable across charts)."""
    a = s.axes
    extra = f" Hkv={a['kv_heads']}" if a["kv_heads"] != a["heads"] else ""
    extra += "".join(f" {k}={v}" for k, v in s.params().items())
    return s.name + extra


def measurements(records: list[dict], baseline: str = "mha:eager") -> list[dict]:
    """Every ok record with achieved throughput and its speedup/memory saving against the baseline."""
    everything = series(records)
    names = labels_of(everything)
    rows = []
    for s in everything:
        base = baseline_of(s, everything, baseline)
        b_lat = dict(zip(*base.xy("latency"))) if base else {}
        b_mem = dict(zip(*base.xy("peak_mem_bytes"))) if base else {}
        for r in s.ok():
            L, lat, mem = length(r), (r.get("latency_ms") or {}), r.get("peak_mem_bytes")
            err = r.get("error") or {}
            rows.append(
                {
                    "series": names[id(s)],
                    **{k: s.axes[k] for k in SCENARIO_KEYS},
                    "L": L,
                    "seq_q": r["seq_q"],
                    "seq_k": r["seq_k"],
                    "kv_heads": r["kv_heads"],
                    "latency_ms": lat.get("median"),
                    "iqr_ms": lat.get("iqr"),
                    "n": lat.get("n"),
                    "flags": list(r.get("flags") or []),
                    "inputs": r.get("inputs"),
                    "attn_entropy": r.get("attn_entropy"),
                    "peak_mem_bytes": mem,
                    "kv_cache_bytes": r.get("kv_cache_bytes"),
                    "tflops": r.get("tflops"),
                    "gbps": r.get("gbps"),
                    "roofline_frac": r.get("roofline_frac"),
                    "rel_l2": err.get("rel_l2"),
                    "full_rel_l2": err.get("full_rel_l2"),
                    **gpu_fields(r),
                    "speedup": float(b_lat[L] / lat["median"]) if L in b_lat and lat.get("median") else None,
                    "mem_saving": float(b_mem[L] / mem) if L in b_mem and mem else None,
                }
            )
    return rows


def gpu_fields(r: dict) -> dict:
    """Energy per call and token (measure/energy.py), the samples left out as throttled
    (measure/clocks.py) and the timing mode of one record; None where not measured."""
    en, clk = r.get("energy") or {}, r.get("clocks") or {}
    return {"energy_j": en.get("energy_j"), "energy_j_per_token": en.get("energy_j_per_token"),
            "energy_source": en.get("source"), "energy_reason": en.get("reason"),
            "throttled_samples": len(clk.get("throttled_samples") or []) if clk.get("available") else None,
            "excluded_frac": clk.get("excluded_frac") if clk.get("available") else None,
            "sm_clock_mhz": (clk.get("sm_clock_mhz") or {}).get("median"),
            "timing_mode": (r.get("timing") or {}).get("mode")}


def write_csv(path: Path, rows: list[dict]) -> None:
    """rows -> CSV (the union of keys as columns, in first-seen order), written atomically."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _cell(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    return v


# ---------------------------------------------------------------- display
SCALING_COLUMNS = (
    ("series", "series"),
    ("scenario", "scenario"),
    ("time_claim", "time claim"),
    ("time_fit", "latency exponent [95% CI]"),
    ("time_verdict", "verdict"),
    ("memory_claim", "memory claim"),
    ("mem_fit", "memory exponent [95% CI]"),
    ("mem_verdict", "verdict"),
    ("lengths", "L range (n)"),
    ("speedup_text", "speedup vs baseline"),
    ("saving_text", "memory saving vs baseline"),
    ("crossover_vs_baseline", "crossover vs baseline"),
    ("frontier", "frontier"),
    ("throughput", "at the longest L"),
    ("notes", "notes"),
)
MEASUREMENT_COLUMNS = (
    ("series", "series"),
    ("scenario", "scenario"),
    ("L_text", "L"),
    ("latency", "median ms"),
    ("iqr", "IQR %"),
    ("memory", "peak memory"),
    ("flops", "TFLOP/s"),
    ("bw", "GB/s"),
    ("roofline", "roofline %"),
    ("speedup_text", "speedup"),
    ("saving_text", "memory saving"),
    ("error_text", "rel. L2 error vs fp64"),
    ("inputs", "inputs"),
    ("entropy_text", "attention entropy"),
)
CROSSOVER_COLUMNS = (
    ("a", "A"),
    ("b", "B"),
    ("scenario", "scenario"),
    ("latency", "latency crossover"),
    ("memory", "peak-memory crossover"),
)
NOT_RUN_COLUMNS = (
    ("series", "series"),
    ("scenario", "scenario"),
    ("status", "status"),
    ("reason", "reason"),
    ("lengths", "lengths"),
)


def scenario_text(r: dict) -> str:
    kv = f"/{r['kv_heads']}" if r.get("kv_heads") not in (None, r["heads"]) else ""
    return (
        f"{r['mode']} {r['dtype']} B{r['batch']} H{r['heads']}{kv} D{r['head_dim']}"
        + (" causal" if r["causal"] else "")
        + f" {r['device']}"
    )


def fmt_bytes(n) -> str:
    return _fmt_bytes(n, ".3g")


def fmt_flops(tflops) -> str:
    """Always in TFLOP/s, the one throughput unit of the terminal, the CSV (`tflops`) and the charts."""
    if not tflops:
        return "-"
    return f"{tflops:.3g} TFLOP/s"


def _x(v) -> str:
    return "-" if v is None else f"{v:.3g}×"


def scaling_display(rows: list[dict]) -> list[dict]:
    """Add the display columns of SCALING_COLUMNS to scaling_table rows."""
    out = []
    for r in rows:
        at = f" at {fmt_len(r['compared_at'])}" if r["compared_at"] else ""
        is_base = r["is_baseline"]
        speed = "baseline" if is_base else (_x(r["speedup"]) + at if r["speedup"] is not None else "-")
        saving = "baseline" if is_base else (_x(r["mem_saving"]) + at if r["mem_saving"] is not None else "-")
        roof = f", {100 * r['roofline_frac']:.0f}% of roofline" if r.get("roofline_frac") else ""
        span = f"{fmt_len(r['l_min'])}–{fmt_len(r['l_max'])} ({r['n_time']})" if r["l_min"] else "-"
        notes = "; ".join(f"{k}: {n}" for k, n in (("latency", r["time_note"]), ("memory", r["mem_note"])) if n)
        out.append(
            {
                **r,
                "scenario": scenario_text(r),
                "lengths": span,
                "speedup_text": speed,
                "saving_text": saving,
                "throughput": fmt_flops(r.get("tflops")) + roof,
                "notes": notes or "-",
            }
        )
    return out


GPU_COLUMNS = (
    ("energy_text", "energy/call (/token)"),
    ("throttle_text", "throttled (excl.)"),
    ("timing_mode", "timing"),
)


def measurement_columns(rows: list[dict]) -> tuple:
    """MEASUREMENT_COLUMNS, plus energy, throttling and the timing mode when any row has them
    (a CPU run without RAPL has none: its table stays as it was)."""
    extra = []
    if any(r.get("energy_j") is not None for r in rows):
        extra.append(GPU_COLUMNS[0])
    if any(r.get("throttled_samples") is not None for r in rows):
        extra.append(GPU_COLUMNS[1])
    if any(r.get("timing_mode") not in (None, "cpu-block") for r in rows):
        extra.append(GPU_COLUMNS[2])
    return MEASUREMENT_COLUMNS + tuple(extra)


def energy_text(joules: float | None, per_token: float | None) -> str:
    if joules is None:
        return "-"
    return f"{fmt_joules(joules)}" + (f" ({fmt_joules(per_token)})" if per_token is not None else "")


def throttle_text(r: dict) -> str:
    if r.get("throttled_samples") is None:
        return "-"
    frac = r.get("excluded_frac") or 0.0
    return f"{r['throttled_samples']} ({100 * frac:.0f} % excluded)" if r["throttled_samples"] else "0"


def gpu_note(rows: list[dict]) -> str:
    """What the energy and throttling columns mean, and why energy is missing where it is."""
    parts = []
    sources = sorted({r["energy_source"] for r in rows if r.get("energy_j") is not None})
    if sources:
        parts.append(f"Energy: {', '.join(sources)} counter around a loop of back-to-back calls (warm cache, no "
                     "flush) lasting at least ten counter refreshes; it covers the whole device or package, idle "
                     "power included; per token: B·Lq tokens per call.")
    missing = sorted({r["energy_reason"] for r in rows if r.get("energy_j") is None and r.get("energy_reason")})
    if sources and missing:
        parts.append("No energy where: " + "; ".join(missing) + ".")
    if any(r.get("throttled_samples") for r in rows):
        parts.append("Throttled samples: timed while NVML reported a power or thermal clock-event reason; left "
                     "out of the median unless the run used --keep-throttled (the raw samples keep them).")
    return " ".join(parts)


def measurement_display(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        lat, iqr = r["latency_ms"], r["iqr_ms"]
        err = r["full_rel_l2"] if r["full_rel_l2"] is not None else r["rel_l2"]
        out.append(
            {
                **r,
                "scenario": scenario_text(r),
                "L_text": fmt_len(r["L"]),
                "latency": "-" if lat is None else f"{lat:.4g}",
                "iqr": spread_text({"median": lat, "iqr": iqr, "n": r.get("n")}),
                "memory": fmt_bytes(r["peak_mem_bytes"]),
                "flops": fmt_flops(r["tflops"]),
                "bw": "-" if r["gbps"] is None else f"{r['gbps']:.3g}",
                "roofline": "-"
                if r["roofline_frac"] is None
                else f"{100 * r['roofline_frac']:.0f}"
                + (" (above roof)" if "above_roof" in r.get("flags", []) else ""),
                "speedup_text": _x(r["speedup"]),
                "saving_text": _x(r["mem_saving"]),
                "entropy_text": "-" if r.get("attn_entropy") is None else f"{r['attn_entropy']:.2f}",
                "error_text": "-" if err is None else f"{err:.2e}" + (" (≥ 1: worse than zeros)" if err >= 1 else ""),
                "energy_text": energy_text(r.get("energy_j"), r.get("energy_j_per_token")),
                "throttle_text": throttle_text(r),
            }
        )
    return out


def with_scenario(rows: list[dict]) -> list[dict]:
    return [{**r, "scenario": scenario_text(r)} for r in rows]
