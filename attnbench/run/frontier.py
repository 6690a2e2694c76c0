"""The memory frontier: the longest sequence each variant/backend runs within a memory budget.

Doubling from a start length until a case fails, then bisection between the last length that
ran and the first that did not. Each probe runs in the isolated worker with the budget enforced
there (RLIMIT_DATA on the CPU, the allocator's memory fraction on a GPU), so running out of
memory costs one probe, never the tool. A length predicted to take longer than the time
budget per call ends the search as "time-limited" instead of running it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attnbench.core.problem import Problem
from attnbench.measure.cost import predict_call_seconds
from attnbench.run.plan import Case, decide_case
from attnbench.run.worker import RunConfig, Worker
from attnbench.variants import registry


@dataclass(frozen=True)
class Probe:
    seq: int
    status: str
    peak_mem_bytes: int | None
    reason: str | None


@dataclass(frozen=True)
class Frontier:
    variant: str
    backend: str
    largest_ok: int | None  # the longest length that ran within the budget
    first_failed: int | None  # the shortest length that did not (None: none did)
    limit: str  # "memory" | "time" | "max-seq" | "unsupported" | "error"
    reason: str | None
    probes: tuple[Probe, ...] = field(default=())


def _probe(worker: Worker, case: Case, timeout: float, budget: int) -> Probe:
    if case.status is not None:
        return Probe(case.problem.seq_q, case.status, None, case.reason)
    rec = worker.run(case, timeout, kind="probe")
    status, reason, peak = rec["status"], rec.get("reason"), rec.get("peak_mem_bytes")
    if status == "ok" and peak is not None and peak > budget:
        status, reason = "oom", f"peak {peak / 2**30:.2f} GiB exceeds the budget"
    return Probe(case.problem.seq_q, status, peak, reason)


def find_frontier(variant: str, backend: str, base: Problem, cfg: RunConfig, worker: Worker,
                  budget: int, start: int = 1024, max_seq: int = 1 << 20, refs: dict | None = None,
                  granularity: int = 256) -> Frontier:
    """Search the sequence axis for one variant/backend (base gives the other axes)."""
    v = registry.get(variant)
    probes: list[Probe] = []

    def case_at(seq: int) -> Case:
        raw = Problem(**{**base.as_dict(), "seq_q": seq, "seq_k": 0, "params": ()}) \
            .with_params(**{**v.defaults, **dict(base.params)})
        return decide_case(v, backend, raw, cfg.device)

    def too_slow(c: Case) -> str | None:
        v = registry.get(c.variant)
        secs = predict_call_seconds(c.problem, v.flops, v.backend(c.backend).materializes, refs)
        if secs is not None and secs > cfg.time_budget:
            return f"L={c.problem.seq_q} needs ~{secs:.0f} s per call (time budget {cfg.time_budget:g} s)"
        return None

    ok, bad, seq = None, None, start
    while seq <= max_seq:  # doubling
        c = case_at(seq)
        if (why := too_slow(c)) is not None:
            return Frontier(variant, backend, ok, None, "time", why, tuple(probes))
        pr = _probe(worker, c, cfg.time_budget * 3, budget)
        probes.append(pr)
        if pr.status == "unsupported" or pr.status == "unavailable":
            return Frontier(variant, backend, None, None, "unsupported", pr.reason, tuple(probes))
        if pr.status != "ok":
            bad = seq
            break
        ok, seq = seq, seq * 2
    if bad is None:
        return Frontier(variant, backend, ok, None, "max-seq", f"ran every length up to {max_seq}", tuple(probes))
    lo, hi = ok or 0, bad
    last_fail = probes[-1]
    while hi - lo > max(granularity, lo // 32):  # bisection to ~3 % or `granularity` tokens
        mid = (lo + hi) // 2 // granularity * granularity or granularity
        if mid in (lo, hi):
            break
        pr = _probe(worker, case_at(mid), cfg.time_budget * 3, budget)
        probes.append(pr)
        if pr.status == "ok":
            lo = mid
        else:
            hi, last_fail = mid, pr
    limit = "memory" if last_fail.status in ("oom", "skipped") else "error"
    return Frontier(variant, backend, lo or None, hi, limit, f"{last_fail.status}: {last_fail.reason}", tuple(probes))


def frontier_rows(frontiers: list[Frontier]) -> list[dict]:
    best = {}
    rows = []
    for f in frontiers:
        rows.append({"variant": f.variant, "backend": f.backend, "largest_ok": f.largest_ok,
                     "first_failed": f.first_failed, "limit": f.limit, "reason": f.reason,
                     "probes": [p.__dict__ for p in f.probes]})
        if f.largest_ok:
            best[(f.variant, f.backend)] = f.largest_ok
    return rows


def default_backends(variant: str, device: torch.device) -> list[str]:
    """The variant's backends that are available here (eager first: the textbook baseline)."""
    v = registry.get(variant)
    return [b.name for b in v.backends if not b.test_only and b.why_unavailable(device) is None]
