"""Latency: CUDA events on a GPU (L2 flushed outside the events), a block-sized
``perf_counter_ns`` on the CPU. Adaptive stop in both: at least `min_samples` samples and
`min_time` seconds, then stop once IQR/median < `target_rel_iqr` or `max_time` is spent
(nvbench's stdrel criterion, torch Timer's adaptive_autorange). Raw samples are kept.

Warm-up: the first call (compilation, caches) is timed apart (`first_call_ms`) and is never a
sample; then at least `min_warmup_calls` steady calls, and more until `warmup_time` is spent. On
the CPU also at least `warmup_calls`, and, if glibc's heap grew over a warm-up call, on until it
has not for `settle_calls` calls in a row (within `settle_time`): a call whose blocks still take
fresh heap page-faults them, which a steady, repeated call does not (memory.timing_allocator).
The fastest steady warm-up call sizes the block: a call shorter than `min_block_time` is timed in
blocks of calls lasting at least that long. A call longer than max_time leaves one sample:
`Stats.n` says so, and `flags` (low_samples, high_variance) carry it into the record.

Each sample keeps its host-time span (`Timing.spans`, perf_counter seconds) so the clock sampler
(measure/clocks.py) can flag samples taken while the GPU throttled, and the timing mode that
produced it (`events`, `cpu-block`; `cuda-graph` comes from measure/graphs.py). The GPU flush
buffer is sized from the device's L2 (FLUSH_FACTOR × L2_cache_size; measure/l2.py checks that
it really leaves the cache cold).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from attnbench.measure.memory import heap_bytes


@dataclass(frozen=True)
class TimingPolicy:
    min_samples: int = 10
    min_time: float = 0.2  # s of measured samples before the spread may stop the loop
    max_time: float = 5.0  # s cap on measuring (warmup excluded); long calls may give n < min_samples
    max_samples: int = 500
    target_rel_iqr: float = 0.05
    warmup_time: float = 0.05  # s of warmup after the first (untimed) call
    min_warmup_calls: int = 1  # steady calls after the first, however long the first took
    # CPU: and at least this many warmup calls (unless the first call lasts warmup_time), then, if
    # the heap grew over one, on until it has not for settle_calls calls in a row or settle_time is
    # spent: glibc grows a repeated call's heap in bursts, with up to 10 quiet calls between them,
    # the last one seen after the 16th call (measure/memory.timing_allocator)
    warmup_calls: int = 16
    settle_calls: int = 24
    settle_time: float = 0.5  # s of warm-up after which an unsettled heap is timed as it is
    min_block_time: float = 1e-3  # s: a CPU sample groups calls until it lasts this long
    l2_flush_bytes: int | None = None  # GPU: zero this much memory before each timed call (None: from the L2)


@dataclass(frozen=True)
class Stats:
    median: float
    mean: float
    min: float
    p10: float
    p90: float
    iqr: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> "Stats":
        s = sorted(samples)
        return cls(median=statistics.median(s), mean=statistics.fmean(s), min=s[0],
                   p10=quantile(s, 0.10), p90=quantile(s, 0.90),
                   iqr=quantile(s, 0.75) - quantile(s, 0.25), n=len(s))


def quantile(sorted_samples: list[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted samples."""
    if len(sorted_samples) == 1:
        return sorted_samples[0]
    pos = q * (len(sorted_samples) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


@dataclass(frozen=True)
class Timing:
    samples_ms: tuple[float, ...]
    calls_per_sample: int
    first_call_ms: float  # the untimed first call (compilation, autotuning, caches)
    stopped_by: str  # "spread" | "max_time" | "max_samples"
    spans: tuple[tuple[float, float], ...] = ()  # per sample: perf_counter seconds at its start and end
    mode: str = "cpu-block"  # "events" | "cpu-block" | "cuda-graph"
    l2_flush_bytes: int | None = None  # GPU: the flush buffer zeroed before each sample

    @property
    def stats(self) -> Stats:
        return Stats.of(list(self.samples_ms))


def stop_reason(samples: list[float], spent: float, policy: TimingPolicy) -> str | None:
    """Why to stop sampling now, or None to go on."""
    if spent >= policy.max_time:
        return "max_time"
    if len(samples) >= policy.max_samples:
        return "max_samples"
    if len(samples) < policy.min_samples or spent < policy.min_time:
        return None
    st = Stats.of(samples)
    return "spread" if st.iqr <= policy.target_rel_iqr * st.median else None


def warm_up_cpu(fn: Callable[[], object], first_ms: float, policy: TimingPolicy = TimingPolicy(),
                heap: Callable[[], int | None] = heap_bytes) -> tuple[float, int]:
    """time_cpu's warm-up after the first call: at least min_warmup_calls steady calls, then for
    warmup_time and warmup_calls (a first call longer than warmup_time is warm-up enough for
    those), then, if `heap()` changed over a warm-up call, on until it has not for settle_calls
    calls in a row or settle_time is spent. Returns the fastest call (s), which sizes the block,
    and the number of calls."""
    per_call, spent, calls, quiet, grew = float("inf"), 0.0, 0, 0, False
    short = first_ms / 1e3 < policy.warmup_time
    while calls < policy.min_warmup_calls or (short and (
            spent < policy.warmup_time or calls < policy.warmup_calls
            or (grew and quiet < policy.settle_calls and spent < policy.settle_time))):
        before = heap()
        t0 = time.perf_counter_ns()
        fn()
        dt = (time.perf_counter_ns() - t0) / 1e9
        quiet = 0 if heap() != before else quiet + 1
        grew = grew or quiet == 0
        per_call, spent, calls = min(per_call, dt), spent + dt, calls + 1
    return per_call, calls


def time_cpu(fn: Callable[[], object], policy: TimingPolicy = TimingPolicy()) -> Timing:
    """Wall-clock latency of fn() on the CPU, in ms per call."""
    t0 = time.perf_counter_ns()
    fn()
    first = (time.perf_counter_ns() - t0) / 1e6
    per_call, _ = warm_up_cpu(fn, first, policy)
    block = max(1, math.ceil(policy.min_block_time / max(per_call, 1e-9)))
    samples: list[float] = []
    spans: list[tuple[float, float]] = []
    spent = 0.0
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(block):
            fn()
        t1 = time.perf_counter_ns()
        dt = (t1 - t0) / 1e9
        samples.append(dt * 1e3 / block)
        spans.append((t0 / 1e9, t1 / 1e9))
        spent += dt
        why = stop_reason(samples, spent, policy)
        if why:
            return Timing(tuple(samples), block, first, why, tuple(spans), "cpu-block")


FLUSH_FACTOR = 2  # the flush buffer is this many times the device's L2
FLUSH_FALLBACK = 256 * 2**20  # when torch does not report the L2 size


def l2_flush_bytes(device: torch.device) -> int:
    """FLUSH_FACTOR × the device's L2 (torch's L2_cache_size), FLUSH_FALLBACK where unknown."""
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
    return FLUSH_FACTOR * l2 if l2 > 0 else FLUSH_FALLBACK


def time_cuda(fn: Callable[[], object], policy: TimingPolicy = TimingPolicy()) -> Timing:
    """Per-call latency from CUDA events; the L2 cache is flushed (zero_ on a buffer of
    FLUSH_FACTOR × L2) before every call, outside the events, so each call starts cold."""
    nbytes = policy.l2_flush_bytes or l2_flush_bytes(torch.device("cuda", torch.cuda.current_device()))
    flush = torch.empty(nbytes // 4, dtype=torch.int32, device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter_ns()
    fn()
    torch.cuda.synchronize()
    first = (time.perf_counter_ns() - t0) / 1e6
    t_start, calls = time.perf_counter(), 0
    while calls < policy.min_warmup_calls or time.perf_counter() - t_start < policy.warmup_time:
        fn()
        torch.cuda.synchronize()
        calls += 1
    samples: list[float] = []
    spans: list[tuple[float, float]] = []
    spent = 0.0
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        flush.zero_()
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
        samples.append(ms)
        spans.append((t0, time.perf_counter()))
        spent += ms / 1e3
        why = stop_reason(samples, spent, policy)
        if why:
            return Timing(tuple(samples), 1, first, why, tuple(spans), "events", nbytes)


def time_call(fn: Callable[[], object], device: torch.device, policy: TimingPolicy = TimingPolicy()) -> Timing:
    return time_cuda(fn, policy) if device.type == "cuda" else time_cpu(fn, policy)
