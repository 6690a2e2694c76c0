"""`attnbench recommend`: per shape, length and mode, the fastest backend within an error and memory
budget (the judgement; report/formodel.py renders it).

A candidate is one (variant, backend, params) of a shape with status ok. A wrong one (core/correctness.py:
its output beyond the budget of its own oracle, or a failed definition reference check) never
qualifies, and the pick's note names it with its reason. Otherwise it qualifies when
- its error is within the budget: the relative L2 error against the fp64 reference of the record's
  variant (a model's records: its own attention is what the model computes) or, for other records,
  against full softmax attention where measured (an approximation is judged as a replacement for
  exact attention). Default budget: exact within the dtype's tolerance (core/tolerance.py): K units of
  roundoff of the record's dtype (TF32's for a kernel that computes float32 dots in TF32 on a GPU,
  core/correctness.budget; rounding the output alone costs ≈ 0.6) plus K float32 units × √Lk
  (sums over Lk keys accumulated in float32 grow like a random walk: measured on the CPU, float32
  attention's error vs fp64 is ≈ 10 units × √(Lk/1024)). A record whose error
  was not measured (reference too large) qualifies when its variant is exact, with a note;
- its peak memory fits the --memory-budget (unknown peak: qualifies, with a note).
transformers' attention functions run as backends hf-eager/hf-sdpa/hf-flex (core/models.HF_IMPLEMENTATION):
the note names the `attn_implementation` a transformers user sets to get the best, or, when the best
is attnbench's own, transformers' fastest qualifying implementation and its median ÷ the best's.
The best is the qualifying candidate of lowest median latency (`metric="energy"`: of lowest energy
per call, records/measure/energy.py; a candidate without an energy figure does not qualify, and
since a case has one energy reading, no interval is claimed); the margin is runner-up median ÷
best median, with a bootstrap interval (gate/stats.bootstrap_ratio over both records' samples,
LEVEL) — a tie when the interval includes 1. Under MIN_SAMPLES samples on either side no
interval is claimed (tie: null). Honest limits: the samples of one run are autocorrelated, so the
interval is optimistic on a shared machine (see gate/stats.py); a margin is about these lengths
on this device only. It lives in gate/ because it is a comparison with the gate's statistics
(report/ may not import gate/; the report's "For your model" section gets it passed in).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from attnbench.core.correctness import budget as error_budget
from attnbench.core.correctness import why_wrong
from attnbench.core.models import HF_IMPLEMENTATION
from attnbench.core.units import fmt_bytes
from attnbench.gate.stats import bootstrap_ratio, seed_for
from attnbench.report.analysis import FAILURES, first_line, fmt_len

LEVEL = 0.95
MIN_SAMPLES = 3
SHAPE_KEYS = ("batch", "heads", "kv_heads", "head_dim", "dtype", "causal")
MODEL_SHAPE_KEYS = ("model", "variant", "params")  # a model's layer groups are separate dispatches
METRICS = ("latency", "energy")


def metric_value(r: dict, metric: str) -> float | None:
    """What a candidate is ranked by: its median latency (ms) or its energy per call (J)."""
    if metric == "energy":
        return (r.get("energy") or {}).get("energy_j")
    return (r.get("latency_ms") or {}).get("median")


@dataclass(frozen=True)
class Pick:
    """One row of the dispatch table."""

    shape: dict[str, Any]
    seq: int
    mode: str
    backend: str | None
    variant: str | None
    runner_up: str | None
    margin: float | None
    margin_ci: tuple[float, float] | None
    tie: bool | None
    note: str = ""
    failed: tuple[dict[str, Any], ...] = ()  # the candidates that were tried here and failed

    def as_json(self) -> dict[str, Any]:
        return {"shape": self.shape, "seq": self.seq, "mode": self.mode, "backend": self.backend,
                "variant": self.variant, "runner_up": self.runner_up, "margin": self.margin,
                "margin_ci": list(self.margin_ci) if self.margin_ci else None, "tie": self.tie, "note": self.note,
                "failed": list(self.failed)}


def shape_of(r: dict) -> dict[str, Any]:
    keys = SHAPE_KEYS + (MODEL_SHAPE_KEYS if r.get("model") else ())
    return {k: r.get(k) for k in keys}


def _error(r: dict) -> float | None:
    e = r.get("error") or {}
    return e.get("rel_l2") if r.get("model") else e.get("full_rel_l2", e.get("rel_l2"))


def _label(r: dict, several_variants: bool) -> str:
    return f"{r['variant']}:{r['backend']}" if several_variants else r["backend"]


def qualifies(r: dict, max_error: float | None, budget: float | None, exact: set[str]) -> tuple[bool, str]:
    """(qualifies, note) of one ok record under the budgets; a wrong record (core/correctness.py:
    its output beyond its own oracle's budget) never qualifies, whatever --max-error allows."""
    wrong = why_wrong(r)
    if wrong:
        return False, f"wrong: {wrong}"
    notes = []
    err = _error(r)
    limit = error_budget(r)[0] if max_error is None else max_error
    if err is None:
        if r["variant"] not in exact:
            return False, "error not measured for an approximation"
        notes.append("error not measured (exact variant)")
    elif err > limit:
        return False, f"error {err:.1e} > {limit:.1e}"
    peak = r.get("peak_mem_bytes")
    if budget is not None:
        if peak is None:
            notes.append("peak memory not measured")
        elif peak > budget:
            return False, f"peak {fmt_bytes(peak)} > budget"
    return True, "; ".join(notes)


def transformers_note(best: dict, rest: list[dict]) -> str:
    """What a transformers user sets to get the best (an hf-* backend: `attn_implementation="sdpa"`),
    or, when the best is attnbench's, transformers' fastest qualifying implementation and how much
    slower its median is ("" when no hf-* backend ran)."""
    if best["backend"] in HF_IMPLEMENTATION:
        return f'transformers: attn_implementation="{HF_IMPLEMENTATION[best["backend"]]}"'
    hf = [r for r in rest if r["backend"] in HF_IMPLEMENTATION]
    if not hf:
        return ""
    r = hf[0]  # rest is sorted by median
    ratio = r["latency_ms"]["median"] / best["latency_ms"]["median"]
    return (f'transformers\' fastest: {r["backend"]} (attn_implementation="{HF_IMPLEMENTATION[r["backend"]]}"), '
            f"{ratio:.2f}× the best's median")


def recommend(records: list[dict], max_error: float | None = None, memory_budget: float | None = None,
              exact: set[str] | None = None, metric: str = "latency") -> list[Pick]:
    """The dispatch table: one Pick per (shape, seq, mode) of the records (where none ran: no backend,
    and a note counting the statuses), ranked by `metric` (METRICS). A candidate that failed at a length (oom, timeout,
    error, killed) is never picked there: the pick's `failed` names it with its status and the first
    line of its reason, and a picked backend that failed at another length of the same shape says where.

    `exact`: the names of exact variants (from the headers' catalogues); default: none known."""
    exact = exact or set()
    groups: dict[str, list[dict]] = {}
    for r in records:
        key = json.dumps([shape_of(r), r["seq_k"], r["mode"]], sort_keys=True, default=str)
        groups.setdefault(key, []).append(r)
    picks = []
    for key, everything in groups.items():
        shape, seq, mode = json.loads(key)
        failed = tuple({"backend": _label(r, True), "status": r["status"], "reason": first_line(r.get("reason"))}
                       for r in everything if r.get("status") in FAILURES)
        pick = _pick(key, shape, seq, mode, everything, max_error, memory_budget, exact, metric)
        picks.append(replace(pick, failed=failed, note=_with_failures(pick.note, failed)))
    picks = _failed_elsewhere(picks, records)
    return sorted(picks, key=lambda p: (json.dumps(p.shape, sort_keys=True, default=str), p.mode, p.seq))


def _with_failures(note: str, failed: tuple[dict[str, Any], ...]) -> str:
    said = "; ".join(f"{f['backend']} failed here ({f['status']}: {f['reason']})" for f in failed)
    return "; ".join(filter(None, [note, said]))


def _failed_elsewhere(picks: list[Pick], records: list[dict]) -> list[Pick]:
    """Each pick whose backend failed at another length of the same shape and mode says where."""
    where: dict[str, list[str]] = {}
    for r in records:
        if r.get("status") in FAILURES:
            k = json.dumps([shape_of(r), r["mode"], r["variant"], r["backend"]], sort_keys=True, default=str)
            where.setdefault(k, []).append(f"{fmt_len(r['seq_k'])} ({r['status']})")
    out = []
    for p in picks:
        k = json.dumps([p.shape, p.mode, p.variant, (p.backend or "").split(":")[-1]], sort_keys=True, default=str)
        at = where.get(k) if p.backend else None
        out.append(replace(p, note="; ".join(filter(None, [p.note, f"{p.backend} failed at {', '.join(at)}"])))
                   if at else p)
    return out


def _pick(key: str, shape: dict, seq: int, mode: str, everything: list[dict], max_error: float | None,
          memory_budget: float | None, exact: set[str], metric: str) -> Pick:
    """The best qualifying ok record of one (shape, seq, mode) by `metric`, with its margin over the
    runner-up."""
    ran_ok = [r for r in everything if r.get("status") == "ok" and (r.get("latency_ms") or {}).get("median")]
    rs = [r for r in ran_ok if metric_value(r, metric)]
    if not rs:
        counts = Counter(r.get("status") for r in everything)
        ran = ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
        why = f"nothing ran ({ran})" if not ran_ok else "no energy measured: " + "; ".join(
            sorted({(r.get("energy") or {}).get("reason") or "no energy field" for r in ran_ok}))
        return Pick(shape, seq, mode, None, None, None, None, None, None, why)
    several = len({r["variant"] for r in rs}) > 1
    ok = [(r, note) for r in rs for good, note in [qualifies(r, max_error, memory_budget, exact)] if good]
    if not ok:
        why = "; ".join(sorted({qualifies(r, max_error, memory_budget, exact)[1] for r in rs}))
        return Pick(shape, seq, mode, None, None, None, None, None, None, f"nothing qualifies: {why}")
    ok.sort(key=lambda x: metric_value(x[0], metric))
    (best, note), rest = ok[0], ok[1:]
    wrong = "; ".join(f"{_label(r, several)} left out as wrong ({why})" for r in rs for why in [why_wrong(r)] if why)
    note = "; ".join(filter(None, [note, wrong]))
    if not rest:
        return Pick(shape, seq, mode, _label(best, several), best["variant"], None, None, None, None,
                    "; ".join(filter(None, [note, transformers_note(best, []), "no runner-up"])))
    second = rest[0][0]
    note = "; ".join(filter(None, [note, transformers_note(best, [r for r, _ in rest])]))
    margin = metric_value(second, metric) / metric_value(best, metric)
    a, b = best.get("samples_ms") or [], second.get("samples_ms") or []
    ci, tie = None, None
    if metric == "energy":
        note = "; ".join(filter(None, [note, "one energy reading per case: no interval"]))
    elif len(a) >= MIN_SAMPLES and len(b) >= MIN_SAMPLES:
        r = bootstrap_ratio(a, b, seed_for(key), level=LEVEL)
        ci, tie = (r.lo, r.hi), bool(r.lo <= 1.0 <= r.hi)
    else:
        note = "; ".join(filter(None, [note, f"under {MIN_SAMPLES} samples: no interval"]))
    return Pick(shape, seq, mode, _label(best, several), best["variant"], _label(second, several),
                margin, ci, tie, note)


def crossovers(picks: list[Pick]) -> list[dict[str, Any]]:
    """Where the choice changes with length, per (shape, mode): {shape, mode, below, at, from, to}.
    A tie on either side is a change of evidence, not of choice: it is marked `tie`."""
    out = []
    by: dict[str, list[Pick]] = {}
    for p in picks:
        by.setdefault(json.dumps([p.shape, p.mode], sort_keys=True, default=str), []).append(p)
    for ps in by.values():
        ps = [p for p in sorted(ps, key=lambda p: p.seq) if p.backend]
        for prev, cur in zip(ps, ps[1:]):
            if cur.backend != prev.backend:
                out.append({"shape": cur.shape, "mode": cur.mode, "below": prev.seq, "at": cur.seq,
                            "from": prev.backend, "to": cur.backend, "tie": bool(prev.tie or cur.tie)})
    return out


def exact_variants(headers: list[dict]) -> set[str]:
    """The exact variants named by the results files' catalogues (files without one: none)."""
    return {name for h in headers for name, c in (h.get("catalogue") or {}).items() if c.get("exact")}


def recommend_files(paths: list, max_error: float | None = None, memory_budget: float | None = None,
                    metric: str = "latency") -> tuple[list[Pick], list[dict[str, Any]], list[dict]]:
    """(picks, crossovers, records) of results files (a later file's case replaces an earlier one)."""
    from attnbench.core.errors import UsageError
    from attnbench.core.results import read

    if not paths:
        raise UsageError("no results files given; accepted: one or more .jsonl files written by `attnbench run`")
    headers, by_id = [], {}
    for p in paths:
        h, recs = read(p)
        headers.append(h)
        by_id.update({r["case_id"]: r for r in recs})
    records = list(by_id.values())
    picks = recommend(records, max_error, memory_budget, exact_variants(headers), metric)
    return picks, crossovers(picks), records


def for_report(records: list[dict], headers: list[dict]) -> list[Pick]:
    """The recommendation of the report's "For your model" section (default budgets)."""
    return recommend(records, exact=exact_variants(headers))
