"""The regression gate's verdicts: baseline results against current results, case by case.

Latency (ratio r = median(current) / median(baseline), a 99 % bootstrap interval [lo, hi] of
r from the raw samples — runs, then samples, when a side merges several runs — and the
two-sided Mann–Whitney p-value; T = --threshold, W = --warn), decided in this order:

    inconclusive  fewer than 5 samples on either side
    regression    p < alpha and lo > 1 + T          (confirmed slower by more than T)
    improvement   p < alpha and hi < 1 − T          (confirmed faster by more than T)
    same          1 − W <= lo and hi <= 1 + W       (any change is smaller than W)
    inconclusive  lo < 1 − T or hi > 1 + T          (a change of T can be neither confirmed nor
                                                     excluded: significant but the interval
                                                     straddles the threshold, or too noisy)
    slower/faster p < alpha and r beyond 1 ± W      (a real change smaller than T: a warning)
    same          otherwise                         (within ±T, not significantly beyond ±W)

Peak memory is close to deterministic and is compared directly: a regression when the current
peak exceeds the baseline by more than --mem-threshold and by more than 1 MiB (an improvement
likewise); the floor keeps page-granular CPU readings of tiny cases from flapping.

Other verdicts: wrong (the current case ran but its output is wrong, core/correctness.py: never
compared for speed, and the gate fails with exit 2 as for an error; a baseline case whose output was
wrong gives the current one the verdict new: there is no speed to compare it with), error (the
current case is not ok: error, oom, timeout, or a status the baseline did not have), n/a (not
measured on either side for the same reason, e.g. unsupported),
new/missing (only in one file, or the baseline case was not ok), reference (the --normalize case),
incomparable (the environment fingerprints differ and --allow-env-mismatch was not given).
An improvement by more than twice the threshold is flagged: the baseline may be stale.

Exit codes: 3 incomparable environments (or usage errors, raised by the CLI), 2 any error or
wrong output, 1 at least one regression in a gated metric (one is enough), else 0.

Honest limits: see attnbench/gate/stats.py (samples are not independent); a normalised ratio
treats the reference's time as exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from attnbench.core.errors import UsageError
from attnbench.gate.sides import Measured, Side, case_label, env_differences

MEM_FLOOR_BYTES = 1 << 20
METRICS = ("latency", "memory", "both")
FORMATS = ("table", "markdown", "json", "junit")
EXIT_OK, EXIT_REGRESSION, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2, 3
_NOT_RUN = ("unsupported", "unavailable", "skipped")


@dataclass(frozen=True)
class Options:
    threshold: float = 0.10  # T: a regression must be confirmed beyond 1 + T
    warn: float = 0.05  # W: "same" means the interval lies within 1 ± W
    metric: str = "latency"  # which metrics decide the exit code: latency | memory | both
    normalize: str = "none"  # none | gemm | VARIANT:BACKEND[:key=value...]
    alpha: float = 0.002  # Mann–Whitney significance level
    mem_threshold: float = 0.05
    allow_env_mismatch: bool = False
    resamples: int = 2000
    level: float = 0.99  # bootstrap interval level
    min_samples: int = 5
    seed: int = 0

    def gates(self, metric: str) -> bool:
        return self.metric in (metric, "both")


@dataclass(frozen=True)
class Latency:
    verdict: str
    why: str
    ratio: float | None = None
    lo: float | None = None
    hi: float | None = None
    p: float | None = None
    n_base: int = 0
    n_cur: int = 0
    stale: bool = False


@dataclass(frozen=True)
class Memory:
    verdict: str
    base: int | None = None
    cur: int | None = None
    stale: bool = False

    @property
    def ratio(self) -> float | None:
        return self.cur / self.base if self.base and self.cur is not None else None


@dataclass(frozen=True)
class CaseResult:
    key: str
    label: str
    verdict: str  # overall, from the gated metrics
    why: str
    latency: Latency | None = None
    memory: Memory | None = None
    base_ms: float | None = None
    cur_ms: float | None = None
    note: str | None = None  # e.g. what the gate's re-run said


@dataclass(frozen=True)
class Report:
    options: Options
    baseline: tuple[str, ...]
    current: tuple[str, ...]
    env_diff: dict
    cases: tuple[CaseResult, ...]

    def having(self, *verdicts: str) -> list[CaseResult]:
        return [c for c in self.cases if c.verdict in verdicts]

    @property
    def incomparable(self) -> bool:
        return bool(self.env_diff) and not self.options.allow_env_mismatch

    @property
    def exit_code(self) -> int:
        if self.incomparable:
            return EXIT_USAGE
        if self.having("error", "wrong"):
            return EXIT_ERRORS
        return EXIT_REGRESSION if self.having("regression") else EXIT_OK

    @property
    def stale(self) -> list[CaseResult]:
        return [
            c
            for c in self.cases
            if c.verdict == "improvement"
            and (
                (c.latency and c.latency.stale and self.options.gates("latency"))
                or (c.memory and c.memory.stale and self.options.gates("memory"))
            )
        ]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cases:
            out[c.verdict] = out.get(c.verdict, 0) + 1
        return out


# ------------------------------------------------------------------ parsing options
_PCT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%?)\s*$")


def parse_fraction(text: str, what: str) -> float:
    """'10%' or '0.10' -> 0.10."""
    m = _PCT.match(str(text))
    value = float(m.group(1)) / (100.0 if m.group(2) else 1.0) if m else -1.0
    if not m or not (0.0 <= value < 1.0) or (not m.group(2) and float(m.group(1)) >= 1.0):
        raise UsageError(
            f"bad {what} '{text}'; accepted: a percentage such as 10% or a fraction such as 0.10 (below 1)"
        )
    return value


def make_options(
    threshold: str = "10%",
    warn: str = "5%",
    metric: str = "latency",
    normalize: str = "none",
    alpha: float = 0.002,
    mem_threshold: str = "5%",
    allow_env_mismatch: bool = False,
) -> Options:
    t, w = parse_fraction(threshold, "--threshold"), parse_fraction(warn, "--warn")
    if w > t:
        raise UsageError(f"--warn ({warn}) must not exceed --threshold ({threshold})")
    if metric not in METRICS:
        raise UsageError(f"unknown --metric '{metric}'; accepted: {', '.join(METRICS)}")
    if not 0.0 < alpha < 1.0:
        raise UsageError(f"bad --alpha {alpha:g}; accepted: a probability between 0 and 1, e.g. 0.002")
    if normalize not in ("none", "gemm"):
        from attnbench.gate.sides import parse_case_spec

        parse_case_spec(normalize)  # raises on a bad spec
    return Options(
        threshold=t,
        warn=w,
        metric=metric,
        normalize=normalize,
        alpha=alpha,
        mem_threshold=parse_fraction(mem_threshold, "--mem-threshold"),
        allow_env_mismatch=allow_env_mismatch,
    )


# ------------------------------------------------------------------ verdicts
def latency_verdict(key: str, base: Measured, cur: Measured, o: Options) -> Latency:
    nb, nc = len(base.samples), len(cur.samples)
    if min(nb, nc) < o.min_samples:
        return Latency(
            "inconclusive", f"too few samples ({nb} vs {nc}; at least {o.min_samples} needed)", n_base=nb, n_cur=nc
        )
    from attnbench.gate.stats import bootstrap_ratio, mann_whitney, seed_for  # numpy/scipy: only when comparing

    ci = bootstrap_ratio(base.groups, cur.groups, seed_for(key, o.seed), o.resamples, o.level)
    p = mann_whitney(cur.samples, base.samples).p
    sig = p < o.alpha
    T, W = o.threshold, o.warn
    stat = dict(ratio=ci.ratio, lo=ci.lo, hi=ci.hi, p=p, n_base=nb, n_cur=nc)
    interval = f"ratio {ci.ratio:.3f} [{ci.lo:.3f}, {ci.hi:.3f}], p={p:.2g}"
    if sig and ci.lo > 1 + T:
        return Latency("regression", f"{interval}: slower by more than {T:.0%}", **stat)
    if sig and ci.hi < 1 - T:
        return Latency("improvement", f"{interval}: faster by more than {T:.0%}", **stat, stale=ci.ratio < 1 - 2 * T)
    if ci.lo >= 1 - W and ci.hi <= 1 + W:
        return Latency("same", f"{interval}: within ±{W:.0%}", **stat)
    if ci.lo < 1 - T or ci.hi > 1 + T:
        why = "significant, but the interval straddles" if sig else "not significant, and the interval reaches past"
        return Latency("inconclusive", f"{interval}: {why} ±{T:.0%}", **stat)
    if sig and abs(ci.ratio - 1) > W:
        kind = "slower" if ci.ratio > 1 else "faster"
        return Latency(kind, f"{interval}: {kind} by less than {T:.0%}", **stat)
    return Latency("same", f"{interval}: within ±{T:.0%}, no significant change beyond ±{W:.0%}", **stat)


def memory_verdict(base: Measured, cur: Measured, o: Options) -> Memory:
    if base.peak_mem is None or cur.peak_mem is None:
        return Memory("n/a", base.peak_mem, cur.peak_mem)
    diff = cur.peak_mem - base.peak_mem
    margin = max(o.mem_threshold * base.peak_mem, MEM_FLOOR_BYTES)
    if diff > margin:
        return Memory("regression", base.peak_mem, cur.peak_mem)
    if -diff > margin:
        stale = cur.peak_mem < (1 - 2 * o.mem_threshold) * base.peak_mem
        return Memory("improvement", base.peak_mem, cur.peak_mem, stale=stale)
    return Memory("same", base.peak_mem, cur.peak_mem)


_SEVERITY = ("wrong", "error", "regression", "inconclusive", "slower", "faster", "improvement", "same", "n/a")


def combine(lat: Latency, mem: Memory, o: Options) -> tuple[str, str]:
    """The case's overall verdict from the gated metrics, and why."""
    gated = ([("latency", lat.verdict, lat.why)] if o.gates("latency") else []) + (
        [("memory", mem.verdict, _mem_why(mem, o))] if o.gates("memory") else []
    )
    gated = [g for g in gated if g[1] != "n/a"] or gated
    metric, verdict, why = min(gated, key=lambda g: _SEVERITY.index(g[1]))
    return verdict, f"{metric}: {why}"


def _mem_why(m: Memory, o: Options) -> str:
    if m.verdict == "n/a":
        return "peak memory not measured on both sides"
    return f"peak {m.base} -> {m.cur} bytes (threshold {o.mem_threshold:.0%} and 1 MiB)"


def compare_case(
    key: str, base: Measured | None, cur: Measured | None, o: Options, reference_key: str | None, incomparable: bool
) -> CaseResult:
    rec = (cur or base).record
    label = case_label(rec)
    if base is None:
        return CaseResult(key, label, "new", "only in the current results", cur_ms=cur.median_ms)
    if cur is None:
        return CaseResult(key, label, "missing", "only in the baseline", base_ms=base.median_ms)
    ms = dict(base_ms=base.median_ms, cur_ms=cur.median_ms)
    if cur.status == "wrong":
        also = " (the baseline's was wrong too)" if base.status == "wrong" else ""
        return CaseResult(key, label, "wrong", f"wrong output, not compared for speed: {cur.reason}{also}", **ms)
    if base.status == "wrong":
        return CaseResult(key, label, "new", f"no speed comparison: the baseline's output was wrong ({base.reason})",
                          **ms)
    if cur.status != "ok":
        if cur.status == base.status and cur.status in _NOT_RUN:
            return CaseResult(key, label, "n/a", f"{cur.status} on both sides: {cur.reason}")
        return CaseResult(key, label, "error", f"{cur.status}: {cur.reason}", **ms)
    if base.status != "ok":
        return CaseResult(key, label, "new", f"no baseline measurement (baseline {base.status}: {base.reason})", **ms)
    if incomparable:
        return CaseResult(key, label, "incomparable", "the environments differ", **ms)
    if key == reference_key:
        return CaseResult(key, label, "reference", "the --normalize reference case", **ms)
    lat, mem = latency_verdict(key, base, cur, o), memory_verdict(base, cur, o)
    verdict, why = combine(lat, mem, o)
    return CaseResult(key, label, verdict, why, lat, mem, **ms)


def check_common(baseline: Side, current: Side) -> None:
    """A usage error (exit 3) when the two sides share no case: every case would be new or missing,
    which says nothing about a change and must not read as a pass."""
    if set(baseline.cases) & set(current.cases):
        return

    def what(side: Side) -> str:
        names = sorted({f"{m.record['variant']}:{m.record['backend']}" for m in side.cases.values()})
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        return f"{len(side.cases)} cases" + (f" of {shown}" if names else "")

    raise UsageError(f"the two results files share no case (baseline: {what(baseline)}; current: "
                     f"{what(current)}); accepted: two runs of the same cases (variant, backend, shape, "
                     f"dtype, mode, params), e.g. of one suite")


def compare(baseline: Side, current: Side, o: Options) -> Report:
    """Every case of either side, matched by identity, with its verdict."""
    diff = env_differences(baseline.env, current.env)
    incomparable = bool(diff) and not o.allow_env_mismatch
    keys = list(current.cases) + [k for k in baseline.cases if k not in current.cases]
    cases = tuple(
        with_kernel_note(compare_case(k, baseline.cases.get(k), current.cases.get(k), o, current.reference_key,
                                      incomparable), baseline.cases.get(k), current.cases.get(k))
        for k in keys
    )
    return Report(o, baseline.paths, current.paths, diff, cases)


def with_kernel_note(c: CaseResult, base: Measured | None, cur: Measured | None) -> CaseResult:
    """A backend from a user's file (record `backend_source`) whose file differs between the two
    sides is said in the case's note: the comparison is of two versions of that kernel."""
    b = (base.record.get("backend_source") if base else None) or {}
    k = (cur.record.get("backend_source") if cur else None) or {}
    if not b or not k or (b.get("where"), b.get("sha256")) == (k.get("where"), k.get("sha256")):
        return c
    if b.get("where") != k.get("where"):
        note = f"the backend comes from {b.get('where')} in the baseline, {k.get('where')} now"
    else:
        note = (f"the backend's file changed since the baseline (sha256 {str(b.get('sha256'))[:12]} -> "
                f"{str(k.get('sha256'))[:12]})")
    return replace(c, note="; ".join(filter(None, (c.note, note))))


def confirm(first: Report, merged: Report, rerun: Report, suspects: set[str]) -> Report:
    """The gate's second look at the suspects (the cases re-run): each takes its verdict from
    all samples merged, and a regression stands only if the re-run by itself is a regression
    too; otherwise it becomes inconclusive. Other cases keep their first verdict."""
    again = {c.key: c for c in rerun.cases}
    both = {c.key: c for c in merged.cases}
    out = []
    for c in first.cases:
        if c.key not in suspects:
            out.append(c)
            continue
        m, r = both[c.key], again[c.key]
        note = "; ".join(filter(None, (f"re-run: first {c.verdict}, re-run alone {r.verdict}, merged {m.verdict}",
                                       m.note)))
        if m.verdict == "regression" and r.verdict != "regression":
            m = replace(m, verdict="inconclusive", why=f"regression not confirmed by the re-run; {m.why}")
        out.append(replace(m, note=note))
    return replace(first, cases=tuple(out), current=first.current + rerun.current)
