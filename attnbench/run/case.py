"""Run one case in this process: inputs, setup, timing, memory, kernel, accuracy.

This is the glue between a backend's closure and the measurement layer; the runner calls it
inside an isolated worker process. Variant code never sees any of this.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from attnbench.variants import registry
from attnbench.measure import accuracy
from attnbench.measure.accuracy import REFERENCE_LIMIT
from attnbench.variants.inputs import make_inputs
from attnbench.measure import flops as fl
from attnbench.measure import memory
from attnbench.measure import telemetry
from attnbench.measure.timing import TimingPolicy, time_call
from attnbench.measure.trace import quiet_stderr, save_trace
from attnbench.core.results import case_id
from attnbench.core.problem import Problem
from attnbench.run.plan import Case
from attnbench.variants.shared import exact_reference, kv_cache_bytes

def mode_call(fn, q, k, v, problem: Problem) -> Callable[[], object]:
    """The timed call for the problem's mode (fwd and decode: the forward alone)."""
    if problem.mode in ("fwd", "decode"):
        return lambda: fn(q, k, v)
    inputs = tuple(t for t in (q, k, v) if t.requires_grad)
    if problem.mode == "bwd":
        out = fn(q, k, v)  # the forward happens once, outside the timed call
        dout = torch.randn_like(out)
        return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)
    dout = torch.randn(q.shape, dtype=q.dtype, device=q.device)
    return lambda: torch.autograd.grad(fn(q, k, v), inputs, dout)


def measure_memory_and_kernel(call: Callable[[], object], device: torch.device, nvml) -> tuple:
    """One call under the profiler (which kernels ran) and the peak-memory probe (how much it
    took); the profiler's own bookkeeping for one call is a few KiB. Returns (peak, kernel)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with quiet_stderr(), profile(activities=acts) as prof:
        if device.type == "cuda":
            peak = memory.peak_cuda(call, nvml.used_bytes)
        else:
            peak = memory.peak_cpu(call)
    return peak, detect_kernel(prof, device)


def detect_kernel(prof, device: torch.device, top: int = 3) -> str:
    """The operators (on a GPU, kernels) that took most self time in a profiled call."""
    events = prof.key_averages()
    if device.type == "cuda":
        ranked = sorted((e for e in events if getattr(e, "self_device_time_total", 0) > 0),
                        key=lambda e: -e.self_device_time_total)
    else:
        ranked = sorted((e for e in events if e.key.startswith(("aten::", "triton", "torch_dynamo", "Torch-Compiled", "CompiledFunction"))
                         and e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
        ranked = ranked or sorted(events, key=lambda e: -e.self_cpu_time_total)
    return ", ".join(e.key for e in ranked[:top]) or "unknown"


def compute_error(variant, problem: Problem, out: torch.Tensor, q, k, v) -> dict | None:
    """Error of the forward output against the variant's fp32 reference (and, for patterns
    and approximations, against full softmax attention). None with reason if too large."""
    elems = problem.batch * problem.heads * problem.seq_q * problem.seq_k
    if elems > REFERENCE_LIMIT:
        return {"reason": f"reference too large ({elems:.2e} scores > {REFERENCE_LIMIT:.1e})"}
    with torch.no_grad():
        out = out.detach().float()
        q32, k32, v32 = (t.detach().float() for t in (q, k, v))
        result = {"vs": "reference", **accuracy.errors(out, variant.reference(q32, k32, v32, problem))}
        if variant.full_attention_error or not variant.exact:
            full = accuracy.errors(out, exact_reference(q32, k32, v32, problem))
            result |= {"full_rel_l2": full["rel_l2"], "full_max_abs": full["max_abs"]}
    return result


def run_case(case: Case, device: torch.device, policy: TimingPolicy, refs: dict | None,
             nvml: telemetry.Nvml | None = None, profile_dir: str | None = None) -> dict:
    """Measure one runnable case; returns the measured fields of its record."""
    variant = registry.get(case.variant)
    backend = variant.backend(case.backend)
    p = case.problem
    torch.manual_seed(0)
    q, k, v = make_inputs(variant, p, device)
    if p.needs_grad:
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    nvml = nvml or telemetry.Nvml()
    before = nvml.snapshot()
    t_case = time.perf_counter()
    t0 = time.perf_counter()
    fn = backend.build(p, device)
    setup_ms = (time.perf_counter() - t0) * 1e3
    call = mode_call(fn, q, k, v, p)
    timing = time_call(call, device, policy)
    peak, kernel = measure_memory_and_kernel(call, device, nvml)
    if profile_dir:
        save_trace(call, device, Path(profile_dir) / f"{case_id(p.as_dict(), case.variant, case.backend, device.type)}.json")
    error = None
    if p.mode in ("fwd", "decode"):
        try:
            error = compute_error(variant, p, peak.output, q, k, v)
        except (MemoryError, RuntimeError) as e:  # the reference alone must not cost the case
            if not ("memory" in str(e).lower() or isinstance(e, MemoryError)):
                raise
            error = {"reason": f"the fp32 reference did not fit: {' '.join(str(e).split())[:120]}"}
    after = nvml.snapshot()
    stats = timing.stats
    flops = fl.mode_flops(variant.flops(p), p.mode)
    nbytes = fl.mode_bytes(variant.bytes(p), p.mode)
    tflops = fl.rate(flops, stats.median, 1e12)
    gbps = fl.rate(nbytes, stats.median, 1e9)
    return {
        "status": "ok", "reason": None,
        "latency_ms": stats.__dict__, "samples_ms": list(timing.samples_ms),
        "setup_ms": setup_ms, "first_call_ms": timing.first_call_ms,
        "peak_mem_bytes": peak.bytes, "mem_source": peak.source,
        "flops": flops, "bytes": nbytes, "kv_cache_bytes": kv_cache_bytes(p),
        "tflops": tflops, "gbps": gbps,
        "roofline_frac": roofline_fraction(flops, nbytes, stats.median, p.dtype, refs),
        "error": error, "kernel": kernel, "threads": torch.get_num_threads(),
        "telemetry": telemetry.summarize(nvml, before, after, time.perf_counter() - t_case),
        "timing": {"calls_per_sample": timing.calls_per_sample, "stopped_by": timing.stopped_by},
    }


def probe_case(case: Case, device: torch.device) -> dict:
    """Does the case run, and how much memory does one call take? (No timing: the frontier
    search only needs to know whether a length fits.)"""
    variant = registry.get(case.variant)
    p = case.problem
    q, k, v = make_inputs(variant, p, device)
    if p.needs_grad:
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    t0 = time.perf_counter()
    call = mode_call(variant.backend(case.backend).build(p, device), q, k, v, p)
    call()  # first call: compilation and caches, outside the memory pass
    peak = memory.peak_cuda(call) if device.type == "cuda" else memory.peak_cpu(call)
    return {"status": "ok", "reason": None, "peak_mem_bytes": peak.bytes, "mem_source": peak.source,
            "wall_s": time.perf_counter() - t0}


def roofline_fraction(flops: float, nbytes: float, median_ms: float, dtype: str, refs: dict | None) -> float | None:
    """Achieved FLOP/s over min(in-run GEMM FLOP/s, intensity × in-run copy bandwidth)."""
    if not refs or not median_ms:
        return None
    gemm = (refs.get("gemm") or {}).get(dtype) or (refs.get("gemm") or {}).get("float32")
    bw = (refs.get("copy") or {}).get("bytes_per_s")
    if not gemm or not bw or nbytes <= 0:
        return None
    roof = min(gemm["flops_per_s"], flops / nbytes * bw)
    achieved = flops / (median_ms * 1e-3)
    return achieved / roof if roof > 0 and math.isfinite(roof) else None
