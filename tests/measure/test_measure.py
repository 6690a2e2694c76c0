"""Measurement: FLOP and byte conventions (hand-computed and cross-checked with torch's
FlopCounterMode), timing statistics and stop rules (structural, never timed), CPU peak memory."""

import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnbench.core.problem import Problem
from attnbench.measure import flops as fl
from attnbench.measure import memory
from attnbench.measure.timing import Stats, TimingPolicy, quantile, stop_reason, time_call, time_cpu, warm_up_cpu
from attnbench.variants import registry
from attnbench.variants.shared import attention_flops, io_bytes, kv_cache_bytes

CPU = torch.device("cpu")


# ---------------------------------------------------------------- FLOPs and bytes
def test_flops_non_causal_by_hand():
    p = Problem(batch=2, heads=4, kv_heads=4, seq_q=128, seq_k=128, head_dim=64)
    assert attention_flops(p) == 4 * 2 * 4 * 128 * 128 * 64 == 33_554_432


def test_flops_causal_square_by_hand():
    B, H, L, D = 2, 4, 128, 64
    p = Problem(batch=B, heads=H, kv_heads=H, seq_q=L, seq_k=L, head_dim=D, causal=True)
    assert attention_flops(p) == 4 * B * H * D * L * (L + 1) // 2


def test_flops_bottom_right_by_hand():
    # Lq=2, Lk=5: query 0 sees keys 0..3 (4), query 1 sees 0..4 (5): 9 pairs
    p = Problem(batch=1, heads=1, kv_heads=1, seq_q=2, seq_k=5, head_dim=8, causal=True)
    assert attention_flops(p) == 4 * 9 * 8
    # Lq=5, Lk=2: rows see 0, 0, 0, 1, 2 keys: 3 pairs
    assert (
        attention_flops(Problem(batch=1, heads=1, kv_heads=1, seq_q=5, seq_k=2, head_dim=8, causal=True)) == 4 * 3 * 8
    )


def test_flops_count_query_heads_for_gqa():
    p = Problem(batch=1, heads=8, kv_heads=2, seq_q=64, seq_k=64, head_dim=32)
    assert registry.get("gqa").flops(p) == 4 * 8 * 64 * 64 * 32


@pytest.mark.parametrize(
    "mode,f,b", [("fwd", 1.0, 1.0), ("decode", 1.0, 1.0), ("bwd", 2.5, 2.0), ("fwd+bwd", 3.5, 3.0)]
)
def test_mode_factors(mode, f, b):
    assert fl.mode_flops(1000.0, mode) == 1000.0 * f
    assert fl.mode_bytes(1000.0, mode) == 1000.0 * b


def test_bytes_by_hand():
    p = Problem(batch=2, heads=8, kv_heads=2, seq_q=16, seq_k=32, head_dim=64, dtype="float16")
    q_or_out = 2 * 8 * 16 * 64
    kv = 2 * 2 * 32 * 64
    assert io_bytes(p) == (2 * q_or_out + 2 * kv) * 2
    assert kv_cache_bytes(p) == 2 * kv * 2
    assert registry.get("gqa").bytes(p) == io_bytes(p)


def test_rate():
    assert fl.rate(2e12, 1000.0, 1e12) == pytest.approx(2.0)
    assert fl.rate(1e9, 0.5, 1e9) == pytest.approx(2000.0)
    assert fl.rate(1.0, 0.0, 1e9) is None and fl.rate(1.0, None, 1e9) is None


def _counted(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def test_eager_flops_match_flop_counter():
    """FlopCounterMode counts 2·M·N·K per matmul: QKᵀ and PV give 4·B·H·Lq·Lk·D, our convention."""
    for variant, p in [
        ("mha", Problem(batch=2, heads=4, kv_heads=4, seq_q=128, seq_k=96, head_dim=64)),
        ("gqa", Problem(batch=1, heads=8, kv_heads=2, seq_q=64, seq_k=64, head_dim=32)),
    ]:
        var = registry.get(variant)
        q, k, v = (
            torch.randn(s)
            for s in [(p.batch, p.heads, p.seq_q, p.head_dim)] + [(p.batch, p.kv_heads, p.seq_k, p.head_dim)] * 2
        )
        assert _counted(var.backend("eager").build(p, CPU), q, k, v) == var.flops(p)


def test_flop_counter_ignores_the_causal_mask():
    """The eager causal path multiplies the full Lq×Lk; our count is only the attended pairs."""
    p = Problem(batch=1, heads=2, kv_heads=2, seq_q=64, seq_k=64, head_dim=32, causal=True)
    q = k = v = torch.randn(1, 2, 64, 32)
    counted = _counted(registry.get("causal").backend("eager").build(p, CPU), q, k, v)
    assert counted == attention_flops(p, pairs=64 * 64)
    assert attention_flops(p) == counted * (64 * 65 // 2) / (64 * 64)


def test_eager_backward_is_twice_the_forward_in_matmuls():
    """Eager fwd+bwd does 3× the forward matmul FLOPs; the 3.5× convention adds FlashAttention's
    recomputation of P (0.5×), which eager does not do."""
    p = Problem(batch=1, heads=2, kv_heads=2, seq_q=32, seq_k=32, head_dim=16, mode="fwd+bwd")
    q, k, v = (torch.randn(1, 2, 32, 16, requires_grad=True) for _ in range(3))
    fn = registry.get("mha").backend("eager").build(p, CPU)
    counted = _counted(lambda: torch.autograd.grad(fn(q, k, v).sum(), (q, k, v)))
    assert counted == 3 * attention_flops(p)


# ---------------------------------------------------------------- timing statistics
def test_stats_known_list():
    s = Stats.of([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.median, s.mean, s.min, s.n) == (3.0, 3.0, 1.0, 5)
    assert s.p10 == pytest.approx(1.4) and s.p90 == pytest.approx(4.6)
    assert s.iqr == pytest.approx(2.0)  # q75 = 4, q25 = 2


def test_stats_single_and_even():
    s = Stats.of([7.0])
    assert (s.median, s.min, s.p10, s.p90, s.iqr, s.n) == (7.0, 7.0, 7.0, 7.0, 0.0, 1)
    s = Stats.of([1.0, 2.0, 3.0, 10.0])
    assert s.median == 2.5 and s.mean == 4.0


def test_quantile_matches_numpy_linear():
    xs = sorted(np.random.default_rng(0).exponential(size=37).tolist())
    for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        assert quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)))


def test_stop_rule():
    pol = TimingPolicy(min_samples=10, min_time=0.2, max_time=1.0, max_samples=50, target_rel_iqr=0.1)
    flat, noisy = [1.0] * 10, [1.0, 2.0] * 5
    assert stop_reason(flat, 0.3, pol) == "spread"
    assert stop_reason(flat[:9], 0.3, pol) is None  # too few samples
    assert stop_reason(flat, 0.1, pol) is None  # too little time
    assert stop_reason(noisy, 0.3, pol) is None  # too noisy: keep going
    assert stop_reason(noisy, 1.0, pol) == "max_time"
    assert stop_reason(noisy * 5, 0.5, pol) == "max_samples"


def test_time_cpu_cheap_fn_reaches_min_samples():
    x = torch.randn(64)
    t = time_cpu(lambda: x.sum(), TimingPolicy(min_samples=10, min_time=0.01, max_time=10.0))
    assert t.stats.n == len(t.samples_ms) >= 10
    assert t.stopped_by in ("spread", "max_samples", "max_time")
    assert t.calls_per_sample >= 1 and all(s > 0 for s in t.samples_ms) and t.first_call_ms >= 0
    assert time_call(lambda: x.sum(), CPU, TimingPolicy(min_samples=3, min_time=0.0, max_time=10.0)).stats.n >= 3


def test_time_cpu_slow_fn_stops_at_max_time():
    t = time_cpu(lambda: time.sleep(0.02), TimingPolicy(min_samples=10, max_time=0.1, warmup_time=0.0))
    assert t.stopped_by == "max_time"
    assert 1 <= t.stats.n <= 5  # each sample sleeps >= 20 ms, so 0.1 s holds at most 5
    assert t.calls_per_sample == 1
    assert min(t.samples_ms) >= 20.0


def test_time_cpu_warms_up_at_least_warmup_calls():
    """After a quick first call, one 0.11 s call would be warmup_time (0.1 s) enough: time_cpu
    still makes warmup_calls (glibc may need ~10 to settle the heap); a first call longer than
    warmup_time needs only the one steady call every warmup makes (min_warmup_calls)."""
    calls = []

    def fn(pause: float = 0.11) -> None:
        calls.append(1)
        if len(calls) > 1:
            time.sleep(pause)

    pol = TimingPolicy(min_samples=1, max_samples=1, max_time=10.0, warmup_time=0.1, warmup_calls=3)
    time_cpu(fn, pol)
    assert len(calls) == 1 + 3 + 1  # first, warmup, one sample of one call
    calls.clear()
    time_cpu(lambda: (calls.append(1), time.sleep(0.01)), TimingPolicy(min_samples=1, max_samples=1, warmup_time=0.001))
    assert len(calls) == 3  # first, one steady warmup call, one sample


def test_warm_up_goes_on_until_the_heap_has_settled():
    """A heap that still grows after warmup_calls keeps the warm-up going until it has been quiet
    for settle_calls calls in a row, within settle_time; one that never grows adds nothing."""
    growth_at, calls = {2, 3, 20, 31}, [0]

    def fn(pause: float = 1e-4):  # each call outlasts warmup_time: warmup_calls and the heap rule
        calls[0] += 1
        time.sleep(pause)

    def heap():  # grows (by 8 MiB) over the calls in growth_at
        return 8 * 2**20 * sum(1 for c in growth_at if c <= calls[0])

    pol = TimingPolicy(warmup_time=1e-5, warmup_calls=16, settle_calls=24, settle_time=10.0)
    assert warm_up_cpu(fn, 1e-3, pol, heap)[1] == 31 + 24
    calls[0], growth_at = 0, set()
    assert warm_up_cpu(fn, 1e-3, pol, heap)[1] == 16  # no growth: warmup_calls only
    calls[0], growth_at = 0, set(range(1, 10**6))  # grows on every call: settle_time ends it
    n = warm_up_cpu(lambda: fn(1e-3), 1e-3, replace(pol, settle_time=0.05), heap)[1]
    assert 16 <= n <= 51, n
    calls[0], growth_at = 0, {1}  # a first call longer than warmup_time is warm-up enough
    assert warm_up_cpu(fn, 1e3, pol, heap)[1] == 1


def test_time_cpu_max_samples():
    t = time_cpu(lambda: None, TimingPolicy(min_samples=10, max_samples=3, max_time=10.0))
    assert t.stopped_by == "max_samples" and t.stats.n == 3


# ---------------------------------------------------------------- peak memory
needs_vmhwm = pytest.mark.skipif(memory.cpu_peak_supported() is not None, reason=f"{memory.cpu_peak_supported()}")


@needs_vmhwm
def test_peak_cpu_of_a_64_mib_tensor():
    peak = memory.peak_cpu(lambda: torch.ones(16 * 2**20))  # 64 MiB of fp32, every page written
    assert peak.source == "cpu-vmhwm"
    assert peak.bytes >= 60 * 2**20


def test_memory_helpers():
    assert memory.rss_bytes() > 0
    assert memory.free_bytes(CPU) > 0


def _slope(lengths, values) -> float:
    """Least-squares slope of log(value) on log(length)."""
    return float(np.polyfit(np.log(lengths), np.log(values), 1)[0])


_FAULTS_SCRIPT = """
import resource, sys, time, torch
from attnbench.measure import memory
from attnbench.measure.timing import warm_up_cpu

def temporary_8mib():
    torch.ones(2 * 1024 * 1024).sum()  # 8 MiB written, read, freed

def minor_faults(repeats=8):
    t0 = time.perf_counter_ns()
    temporary_8mib()
    warm_up_cpu(temporary_8mib, (time.perf_counter_ns() - t0) / 1e6)  # as time_cpu warms up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        temporary_8mib()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

memory.timing_allocator()  # as the worker starts
steady = minor_faults()
hole = torch.ones(2 * 1024 * 1024)  # a free 8 MiB chunk in the middle of the heap, as timed
held = torch.ones(64 * 1024)  # calls leave: a block above it keeps it from being trimmed
del hole
with memory.memory_pass():  # the state peak_cpu measures in
    pinned = minor_faults()
print(steady, pinned)
"""


def test_timing_state_reuses_temporaries_memory_state_maps_them_fresh():
    """Timed calls run in glibc's steady state (a repeated call's 8 MiB temporary comes back
    from the heap: almost no page faults); the memory pass's pinned state maps every large
    block anew (up to 2048 faults per 8 MiB of 4 KiB pages), even with a free chunk left in the
    middle of the heap (without the fence it serves every block: CI once read 2047 faults in all).
    Counted with getrusage, not timed, in a fresh process (as the worker is), after time_cpu's own
    warm-up (8 calls were too few: the heap kept growing until the 10th call in about a third of
    fresh processes; 16 once too few in a full-suite run, where 4096 faults came after the 16th
    call; see timing_allocator)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    steady, pinned = map(int, out.stdout.split())
    assert pinned >= 8 * 2048 // 2, (pinned, steady)  # fewer than 2048 each if huge pages back some
    assert steady <= pinned // 20, (pinned, steady)


@needs_vmhwm
def test_memory_pass_is_exact_after_timing_state_heap_reuse():
    """Heap slack left by timed calls (16 MiB blocks freed to the heap) must not hide a call's
    allocation from the memory pass: peak_cpu pins the threshold and trims first."""
    memory.timing_allocator()
    for _ in range(4):
        torch.ones(4 * 1024 * 1024).sum()  # 16 MiB, from the heap in the timing state
    peak = memory.peak_cpu(lambda: torch.ones(2 * 1024 * 1024)).bytes  # 8 MiB held at return
    assert 8 * 2**20 <= peak <= 10 * 2**20, peak


@needs_vmhwm
def test_eager_memory_grows_quadratically_sdpa_does_not():
    memory.timing_allocator()  # the worker's state between memory passes: heap reuse allowed
    lengths = (512, 1024, 2048)
    peaks: dict[str, list[int]] = {"eager": [], "sdpa": []}
    var = registry.get("mha")
    for L in lengths:
        p = Problem(batch=1, heads=4, kv_heads=4, seq_q=L, seq_k=L, head_dim=64)
        q, k, v = (torch.randn(1, 4, L, 64) for _ in range(3))
        for name in peaks:
            fn = var.backend(name).build(p, CPU)
            fn(q, k, v)  # first call outside the memory pass, as the runner does
            peaks[name].append(max(memory.peak_cpu(lambda: fn(q, k, v)).bytes, 4096))
    eager, sdpa = _slope(lengths, peaks["eager"]), _slope(lengths, peaks["sdpa"])
    assert eager >= 1.7, (eager, peaks)
    assert sdpa <= 1.3, (sdpa, peaks)
    assert peaks["eager"][-1] >= 2 * 4 * 2048 * 2048 * 4  # scores and probabilities, fp32
