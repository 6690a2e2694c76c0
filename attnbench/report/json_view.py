"""`attnbench show --json`: every table `show` prints, as one JSON object (no torch).

Fields (docs/reports.md, "show --json"):
  baseline      the VARIANT:BACKEND speedups and crossovers are measured against; null when it
                did not run (then `baseline_note` says so and no speedup is given)
  scaling       one row per series and metric: series, shape, metric, exponent, ci_low, ci_high,
                lengths, claim, verdict, note, model (report.analysis.json_rows)
  measurements  one row per ok record: series, the shape axes, L, latency_ms (median), iqr_ms, n,
                peak_mem_bytes, tflops, gbps, roofline_frac, rel_l2, full_rel_l2, speedup and
                mem_saving against the baseline (null without one), flags
  crossovers    pairs of series whose latency or memory order swaps within the swept lengths: a, b,
                the shape axes, latency, memory (sentences), latency_L
  not_run       series where nothing ran, then every failed case (oom, timeout, error, killed) of a
                series that ran: series, the shape axes, status, reason, lengths
  wrong         every ok record whose output is wrong (core/correctness.py), left out of every table
                above: series, scenario, L, latency (its median, kept), params, reason
NaN and infinities are written as null, so the output is strict JSON.
"""

from __future__ import annotations

import math

from attnbench.report import tables as T
from attnbench.report.analysis import json_rows, scaling_table


def _strict(v):
    """NaN/inf -> None, recursively (json.dumps would write NaN, which is not JSON)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    return v


def show_document(records: list[dict], baseline: str, note: str | None,
                  wrong: list[tuple[dict, str]] = ()) -> dict:
    """The object `show --json` prints (fields in the module docstring); `records` those a speed claim
    may use, `wrong` the (record, reason) left out (core/correctness.split)."""
    from attnbench.report.wrong import rows as wrong_rows

    doc = {
        "baseline": None if note else baseline,
        "baseline_note": note,
        "scaling": json_rows(scaling_table(records, baseline)),
        "measurements": T.measurements(records, baseline),
        "crossovers": T.crossover_table(records, baseline),
        "not_run": T.not_run(records),
        "wrong": wrong_rows(list(wrong)),
    }
    return _strict(doc)
