"""The memory frontier: the longest sequence each variant/backend runs within a memory budget.

Doubling from a start length until a case fails, then bisection between the last length that
ran and the first that did not. Each probe runs in the isolated worker with the budget enforced
there (RLIMIT_DATA on the CPU, the allocator's memory fraction on a GPU), so running out of
memory costs one probe, never the tool. A length predicted to take longer than the per-call
limit (`--call-limit`) ends the search as "time-limited" instead of running it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attnbench.core.errors import UsageError
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
            return f"L={c.problem.seq_q} needs ~{secs:.0f} s per call (--call-limit {cfg.time_budget:g} s)"
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


# ---------------------------------------------------------------- the command's search
@dataclass(frozen=True)
class FrontierRequest:
    """`attnbench frontier`'s options: `shape` holds the shape axes given (make_sweep's names),
    one value each; `params` the --param items; `given` the axes given (a model keeps the others)."""

    variants: str
    backends: str | None
    shape: dict
    params: list[str] | None
    budget: int  # bytes
    start: str
    max_seq: str
    device: str
    call_limit: float  # seconds one call may take
    model: str | None = None
    layers: int | None = None
    given: frozenset = frozenset()


def _base_problem(req: FrontierRequest) -> tuple[list[str], Problem]:
    """The variants searched and the problem of every axis but the length (checked first)."""
    from attnbench.run.plan import check_params, make_sweep, parse_param_items

    sw = make_sweep(variants=req.variants, **req.shape)
    for axis in ("batch", "heads", "kv_heads", "head_dim", "dtype", "causal", "modes"):
        if len(getattr(sw, axis)) > 1:
            option = "--mode" if axis == "modes" else "--" + axis.replace("_", "-")
            raise UsageError(f"frontier takes one {option} value (got {', '.join(map(str, getattr(sw, axis)))})")
    only = tuple(b.strip() for b in req.backends.split(",") if b.strip()) if req.backends else ()
    params = check_params(parse_param_items(req.params), sw.variants, only) if req.params else {}
    base = Problem(batch=sw.batch[0], heads=sw.heads[0], kv_heads=sw.kv_heads[0], head_dim=sw.head_dim[0],
                   dtype=sw.dtype[0], causal=sw.causal[0], mode=sw.modes[0], params=tuple(sorted(params.items())))
    return list(sw.variants), base


def search(req: FrontierRequest, log) -> tuple[dict, list[dict]]:
    """Search every variant/backend; returns (the JSON document, its rows). `log(line)` reports
    progress. Usage errors (UsageError) are raised before any probe runs."""
    from dataclasses import replace

    from attnbench.run.plan import parse_length
    from attnbench.run.session import make_config, resolve_device
    from attnbench.run.settings import build

    names, base = _base_problem(req)
    lo, hi = parse_length(req.start, "--start"), parse_length(req.max_seq, "--max-seq")
    settings = build(None, None, device=req.device)
    dev = resolve_device(settings.device)
    cfg = replace(make_config(dev, settings), time_budget=req.call_limit, mem_limit=req.budget)
    groups = [(v, base, None) for v in names]
    spec = None
    if req.model is not None:
        from attnbench.run.models import frontier_groups, resolve_models

        [spec] = resolve_models(req.model, None, req.layers)
        groups = frontier_groups(spec, base, set(req.given))
        base = groups[0][1]
    for v, _, _ in groups:
        for b in _backends(v, req.backends, dev):
            registry.get(v).backend(b)  # an unknown backend: one line before any work
    refs = refs_outside_budget(cfg, base.dtype)
    worker = Worker(cfg)
    worker.refs = refs  # handed to the limited worker when it starts
    found = []
    try:
        for v, gbase, why in groups:
            if why:
                log(f"  {v}: unsupported: {why}")
                continue
            for b in _backends(v, req.backends, dev):
                log(f"searching {v}/{b} ...")
                f = find_frontier(v, b, gbase, cfg, worker, req.budget, lo, hi, refs)
                found.append(f)
                log(f"  {v}/{b}: largest L that ran {f.largest_ok or '-'}; limit {f.limit}: {f.reason or ''}")
    finally:
        worker.close()
    rows = frontier_rows(found)
    if spec is not None:
        from attnbench.run.models import frontier_kv

        rows = [r | frontier_kv(spec, r, base) for r in rows]
    return {"budget_bytes": req.budget, "device": dev.type, "problem": base.as_dict(), "frontier": rows}, rows


def _backends(variant: str, given: str | None, device: torch.device) -> list[str]:
    return [b.strip() for b in given.split(",") if b.strip()] if given else default_backends(variant, device)


def refs_outside_budget(cfg: RunConfig, dtype: str) -> dict:
    """The in-run references (GEMM, copy) measured in a worker of their own without the memory
    limit: their large operands must not count against (or crash within) the budget."""
    from dataclasses import replace

    ref_worker = Worker(replace(cfg, mem_limit=None))
    try:
        return ref_worker.measure_refs((dtype,))
    finally:
        ref_worker.close()
