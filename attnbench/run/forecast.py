"""The plan of a run, made before it starts: for every case the decision (run, or why not), the
predicted peak memory and the predicted wall time of what the worker really does with it; and
the ETA during the run, the same model corrected by how fast the finished cases really went.

What a runnable case costs in the worker (run/case.py run_case, measure/timing.py time_cpu), with
t = one call's predicted seconds (measure/cost.py predict_call_seconds: FLOPs at a fraction of the
in-run GEMM rate; here also never faster than its bytes at the in-run DRAM copy rate; both rates
the medians of the references' samples, a typical call rather than the best):

- setup: a backend that declares `compiles` (FlexAttention, transformers' flex_attention) compiles
  on its first call of each shape (FACTS.md, this CPU: ~14 s for a
  process's first compile, ~4 s for each later one); other backends' setup is not modelled;
- the untimed first call, then warm-up: on the CPU, calls until `warmup_time` and `warmup_calls`
  are both reached, or a single call when the first lasted longer than `warmup_time` (the
  settling of a heap that still grows, up to `settle_time` more, is not modelled);
- the timing loop: samples of ceil(min_block_time / t) calls until `min_samples` samples and
  `min_time` seconds (the spread rule stopping there), capped at `max_time` (the worker's
  min(policy max_time, time budget / 4), the suite's `sample_time`) plus the sample that crosses
  it, and at `max_samples`. When the in-run GEMM's own samples spread more than the IQR target
  (a loaded machine), the spread rule is assumed never to stop the loop: it runs to the cap;
- the energy loop (measure/energy.py): 1 s on a GPU (NVML's counter), 0.05 s on a CPU with
  readable RAPL counters, none otherwise or when the time budget / 4 is shorter;
- the memory/kernel pass: one call (more under the profiler: not modelled);
- forward and decode cases: the fp64 oracle once per (variant, problem) up to `reference_limit`
  score elements: two materialised products at a quarter of the fp32 GEMM rate (the fp64 rate is
  not measured: half is the vector width ratio, and the oracle measured ~3x slower than that on
  the CPU) plus the fp64 score traffic at the copy rate; and for every such case the attention
  entropy (fp32 scores of up to 256 rows per head, one head at a time);
- every torch operation costs at least `op_seconds`, the median of the smallest in-run copy: on
  a loaded machine each operation waits for a descheduled thread, which is what makes
  many-small-operation backends (Performer's chunks), the per-head entropy loop and the worker's
  per-case bookkeeping (CASE_OPS operations) slow there;
- a backend that materialises scores computes the dense (Lq, Lk) matrix whatever a mask leaves
  out (measure/cost.py predict_call_seconds);
- a case never runs past its time budget plus the worker's start-up grace (then it is killed).

Honest limits: the model assumes the machine is as fast as during the in-run references; on a
loaded machine the spread rule fails more often (samples run to max_time) and calls wait for
descheduled threads, so the ETA multiplies the remaining prediction by the measured/predicted
ratio of the cases finished so far. The worker's start-up and its references are not in the
per-case figures: a plan made before the run (`run --dry-run`) adds them once (`Startup`: what the
last run in this environment spent on them, from measure/refs_cache.py, else an estimate).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from attnbench.core.batch_spec import composition_fields, reference_scores
from attnbench.measure import energy
from attnbench.measure.cost import predict_call_seconds
from attnbench.measure.flops import mode_bytes
from attnbench.run.plan import Case, is_distributed
from attnbench.run.worker import (
    STARTUP_GRACE_S,
    RunConfig,
    call_peak_model,
    case_key,
    declared_backend,
    materializes,
    skip_reason,
    work_flops,
)
from attnbench.variants import registry

COMPILE_FIRST_S = 14.0  # FACTS.md: torch.compile(flex_attention) on this CPU, a process's first compile
COMPILE_NEXT_S = 4.0  # FACTS.md: each later shape or mask in the same process
FP64_GEMM_SHARE = 0.25  # the fp64 oracle's matmuls, of the fp32 GEMM rate (measured ~3x slower than half)
ORACLE_OPS = 12  # torch operations of one dense fp64 reference (matmuls, scale, mask, softmax, casts)
ENTROPY_OPS = 8  # torch operations per (batch, head) of measure.inputs.mean_entropy
CASE_OPS = 40  # the worker's other per-case operations (inputs, profiler, statistics, the record)
SCORE_PASSES = 6  # materialised scores: write QKᵀ, scale (read, write), softmax (read, write), read for PV
CONFIRM_OVER_S = 600.0  # a plan longer than this asks for confirmation on a terminal


@dataclass(frozen=True)
class CaseForecast:
    """One case of the plan; `seconds` covers all its rounds, 0 when it will not run."""

    case: Case
    case_id: str
    decision: str  # "run", or the reason the case will not run
    status: str  # "run" | "unsupported" | "unavailable" | "skipped"
    seconds: float
    peak_bytes: float | None
    call_seconds: float | None

    def as_json(self) -> dict:
        return {
            "case_id": self.case_id,
            "variant": self.case.variant,
            "backend": self.case.backend,
            **self.case.problem.as_dict(),
            **composition_fields(self.case.problem),
            "predicted_seconds": round(self.seconds, 3),
            "predicted_call_seconds": self.call_seconds,
            "predicted_peak_bytes": self.peak_bytes,
            "decision": self.decision,
        }


@dataclass(frozen=True)
class Startup:
    """What a run spends before its first case: the command's own start (interpreter, imports),
    its worker's start and in-run references."""

    seconds: float
    note: str  # where the figure comes from ("references cached 12 min ago", ...)


@dataclass(frozen=True)
class Plan:
    cases: tuple[CaseForecast, ...]
    rounds: int
    time_budget: float
    device: str
    startup: Startup | None = None  # None: a plan made inside the run, after its start-up

    @property
    def seconds(self) -> float:
        return (self.startup.seconds if self.startup else 0.0) + sum(c.seconds for c in self.cases)

    @property
    def to_run(self) -> list[CaseForecast]:
        return [c for c in self.cases if c.status == "run"]

    @property
    def peak(self) -> CaseForecast | None:
        runs = [c for c in self.to_run if c.peak_bytes is not None]
        return max(runs, key=lambda c: c.peak_bytes) if runs else None

    def as_json(self) -> dict:
        return {
            "device": self.device,
            "rounds": self.rounds,
            "time_budget": self.time_budget,
            "cases": [c.as_json() for c in self.cases],
            "to_run": len(self.to_run),
            "predicted_seconds": round(self.seconds, 3),
            "predicted_startup_seconds": round(self.startup.seconds, 3) if self.startup else None,
            "startup_note": self.startup.note if self.startup else None,
            "predicted_peak_bytes": self.peak.peak_bytes if self.peak else None,
        }


def typical_rates(refs: dict) -> dict:
    """The references with their median rates in place of the best: the plan predicts a typical
    call, while the skip rule (run/worker.py) holds a case to the best the machine reached."""
    gemm = {d: {**g, "flops_per_s": g.get("median_flops_per_s") or g["flops_per_s"]}
            for d, g in (refs.get("gemm") or {}).items()}
    copy = dict(refs.get("copy") or {})
    if copy.get("median_ms") and copy.get("bytes"):
        copy["bytes_per_s"] = 2 * copy["bytes"] / (copy["median_ms"] * 1e-3)
    return {**refs, "gemm": gemm, "copy": copy}


def call_seconds(case: Case, refs: dict | None) -> float | None:
    """One call's predicted seconds: FLOPs at the cost model's share of the in-run GEMM rate, but
    never less than the bytes it moves (inputs, output and, materialised, the scores' passes) at
    the in-run DRAM copy rate (both the medians of the references' samples where recorded). None
    without references."""
    if not refs:
        return None
    refs = typical_rates(refs)
    v, p = registry.get(case.variant), case.problem
    mat = materializes(case)
    compute = predict_call_seconds(p, work_flops(case), mat, refs) or 0.0
    copy = (refs.get("copy") or {}).get("bytes_per_s")
    if not copy:
        return compute
    scores = SCORE_PASSES * 4 * reference_scores(p) if mat else 0
    moved = mode_bytes(v.bytes(p), p.mode) + scores * (2 if p.needs_grad else 1)
    return max(compute, moved / copy)


def noisy(refs: dict | None, policy) -> bool:
    """The in-run GEMM's samples spread ((p90 − p10)/median) more than the timing loop's IQR target:
    the cases' samples will not meet it either, and their loops run to max_time."""
    g = ((refs or {}).get("gemm") or {}).get("float32") or next(iter(((refs or {}).get("gemm") or {}).values()), {})
    spread = g.get("spread")
    return spread is not None and spread > policy.target_rel_iqr


def measure_seconds(t: float, policy, device_type: str, to_max_time: bool = False) -> float:
    """Warm-up and the timing loop of measure/timing.py for a call of t seconds (first call excluded);
    to_max_time: the spread rule never stops the loop (a noisy machine)."""
    if device_type == "cpu":
        warm = t if t >= policy.warmup_time else max(policy.warmup_calls * t, policy.warmup_time)
        sample = max(1, math.ceil(policy.min_block_time / max(t, 1e-9))) * t
    else:
        warm = max(policy.min_warmup_calls * t, policy.warmup_time)
        sample = t
    spread_stop = max(policy.min_samples * sample, policy.min_time)
    cap = min(policy.max_time + sample, policy.max_samples * sample)
    loop = max(sample, cap if to_max_time else min(spread_stop, cap))
    return warm + loop


def op_seconds(refs: dict | None) -> float:
    """One small torch operation's typical wall time: the median of the smallest in-run copy (a few
    µs on a quiet machine; on a loaded one the wait for a descheduled thread, often milliseconds).
    0 without references."""
    levels = ((refs or {}).get("copy") or {}).get("levels") or []
    small = min(levels, key=lambda lv: lv.get("bytes", float("inf")), default={})
    return float(small.get("median_ms") or 0.0) * 1e-3


def _rates(refs: dict) -> tuple[float, float]:
    """(fp32 GEMM FLOP/s, copy bytes/s), the typical (median) rates."""
    typical = typical_rates(refs)
    gemm = (typical["gemm"].get("float32") or next(iter(typical["gemm"].values())))["flops_per_s"]
    return gemm, (typical.get("copy") or {}).get("bytes_per_s") or float("inf")


def oracle_seconds(case: Case, refs: dict, limit: int) -> float:
    """The fp64 oracle of a forward case (run/case.py compute_error): 0 beyond `limit` scores."""
    p = case.problem
    elems = reference_scores(p)
    if elems > limit:
        return 0.0
    v = registry.get(case.variant)
    refs_n = 2 if (v.full_attention_error or not v.exact) else 1
    gemm, copy = _rates(refs)
    one = 4.0 * elems * p.head_dim / (gemm * FP64_GEMM_SHARE) + SCORE_PASSES * 8 * elems / copy
    return refs_n * (one + ORACLE_OPS * op_seconds(refs))


def entropy_seconds(case: Case, refs: dict, limit: int) -> float:
    """The attention entropy of a forward case (measure.inputs.mean_entropy, computed with the
    error): fp32 scores of up to ENTROPY_ROWS query rows per (batch, head), one head at a time."""
    from attnbench.measure.inputs import ENTROPY_ROWS

    p = case.problem
    if p.batch * p.heads * p.seq_q * p.seq_k > limit or p.param("batch_spec") is not None:  # none for a mixed batch
        return 0.0
    gemm, copy = _rates(refs)
    elems = p.batch * p.heads * min(p.seq_q, ENTROPY_ROWS) * p.seq_k
    heads = p.batch * p.heads
    return 2.0 * elems * p.head_dim / gemm + SCORE_PASSES * 4 * elems / copy + heads * ENTROPY_OPS * op_seconds(refs)


def forecast(
    cases: list[Case], cfg: RunConfig, refs: dict | None, rounds: int = 1, startup: Startup | None = None
) -> Plan:
    """The plan of `cases` run with `cfg` and the in-run references `refs` (None: times unknown, 0);
    `startup`: the run's start-up, for a plan made before it (`run --dry-run`)."""
    from attnbench.measure.accuracy import REFERENCE_LIMIT

    policy = replace(cfg.policy, max_time=min(cfg.policy.max_time, max(0.1, cfg.time_budget / 4)))
    limit = REFERENCE_LIMIT if cfg.reference_limit is None else cfg.reference_limit
    compiled = 0
    to_max = noisy(refs, policy)
    energy_s = energy.planned_loop_seconds(cfg.device.type, cfg.time_budget / 4)
    oracles: set = set()
    out = []
    for c in cases:
        cid = case_key(c, cfg.device, cfg.threads)
        peak = call_peak_model(c) if c.status is None else None
        if c.status is not None:
            out.append(CaseForecast(c, cid, c.reason or c.status, c.status, 0.0, None, None))
            continue
        why = skip_reason(c, cfg, refs)
        if why is not None:
            out.append(CaseForecast(c, cid, why, "skipped", 0.0, peak, None))
            continue
        t = call_seconds(c, refs)
        secs = 0.0
        if t is not None and not is_distributed(c):
            t = max(t, op_seconds(refs))  # at least one operation's dispatch
            energy_loop = max(energy_s, t) if energy_s else 0.0  # at least one call when it runs
            secs = (2 * t + measure_seconds(t, policy, cfg.device.type, to_max) + CASE_OPS * op_seconds(refs)
                    + energy_loop)
            if getattr(declared_backend(c), "compiles", False):
                secs += COMPILE_FIRST_S if compiled == 0 else COMPILE_NEXT_S
                compiled += 1
            key = (c.variant, c.problem)
            if c.problem.mode in ("fwd", "decode"):
                secs += entropy_seconds(c, refs, limit)  # every case
                if key not in oracles:  # the oracle: once per (variant, problem), cached in the worker
                    oracles.add(key)
                    secs += oracle_seconds(c, refs, limit)
            secs = min(secs, cfg.time_budget + STARTUP_GRACE_S) * rounds
        out.append(CaseForecast(c, cid, "run", "run", secs, peak, t))
    return Plan(tuple(out), rounds, cfg.time_budget, cfg.device.type, startup)


def fmt_duration(s: float) -> str:
    """42 s, 3 min 10 s, 1 h 12 min."""
    s = max(0.0, s)
    if s < 59.5:
        return f"{s:.0f} s" if s >= 9.5 else f"{s:.1f} s"
    if s < 3570:
        m, sec = divmod(round(s), 60)
        return f"{m} min {sec} s" if sec else f"{m} min"
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m} min" if m else f"{h} h"


def reason_group(reason: str) -> str:
    """A reason with its numbers blanked: the cases skipped for the same cause share it."""
    return re.sub(r"\d+(\.\d+)?", "#", reason)


class Eta:
    """Remaining seconds: the plan's prediction for the cases not yet done, times the ratio of
    measured to predicted wall time of the cases done so far (1 before the first)."""

    def __init__(self, plan: Plan):
        self.left = {c.case_id: c.seconds / max(plan.rounds, 1) for c in plan.cases}
        self.rounds_left = {c.case_id: (plan.rounds if c.status == "run" else 1) for c in plan.cases}
        self.predicted_done = 0.0
        self.measured_done = 0.0

    @property
    def ratio(self) -> float:
        return self.measured_done / self.predicted_done if self.predicted_done > 0 else 1.0

    def done(self, case_id: str, wall_s: float | None, whole_case: bool = False) -> None:
        """One round of `case_id` took wall_s (whole_case: no further rounds of it will run)."""
        per_round = self.left.get(case_id, 0.0)
        if per_round > 0 and wall_s is not None:
            self.predicted_done += per_round
            self.measured_done += wall_s
        n = self.rounds_left.get(case_id, 1)
        self.rounds_left[case_id] = 0 if whole_case else max(0, n - 1)

    def remaining(self) -> float:
        return self.ratio * sum(self.left[c] * n for c, n in self.rounds_left.items() if c in self.left)
