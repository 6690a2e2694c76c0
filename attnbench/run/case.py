"""Run one case in this process: inputs, setup, timing, memory, kernel, accuracy.

This is the glue between a backend's closure and the measurement layer; the runner calls it
inside an isolated worker process. Variant code never sees any of this.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

import torch

from attnbench.core.batch_spec import reference_scores
from attnbench.core.problem import Problem
from attnbench.core.results import case_id, timing_flags
from attnbench.measure import accuracy, clocks, contention, energy, graphs, memory, telemetry
from attnbench.measure import flops as fl
from attnbench.measure import refs as refs_mod
from attnbench.measure.accuracy import REFERENCE_LIMIT
from attnbench.measure.inputs import make_inputs, mean_entropy
from attnbench.measure.timing import Stats, Timing, TimingPolicy, time_call
from attnbench.measure.trace import quiet_stderr, save_trace
from attnbench.run.plan import Case
from attnbench.run.precheck import precheck, refusal
from attnbench.variants import registry
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


# Operators that allocate, view, fill or compare: never "the kernel that ran".
_NOT_KERNEL = re.compile(
    r"aten::(empty\w*|zeros\w*|ones\w*|full\w*|new_\w+|fill_|zero_|expand\w*|view\w*|reshape|_reshape_alias|"
    r"as_strided\w*|unsqueeze\w*|squeeze\w*|transpose\w*|permute|t|select|slice|narrow|unbind|split\w*|"
    r"contiguous|clone|copy_|to|_to_copy|detach\w*|alias|lift\w*|resolve_\w+|item|_local_scalar_dense|"
    r"result_type|arange|resize_|set_|isneginf|isposinf|isinf|isnan|isfinite|all|any|eq|ne|lt|le|gt|ge|"
    r"logical_\w+|scaled_dot_product_attention)"
)
_ATTENTION = re.compile(r"attention|flash|fmha|sdpa", re.I)
# Without a fused op, the matrix products are the attention's work (an elementwise scale or mask
# can take more self time at small sizes, and more or less under load: ranked after them).
_MATMUL = re.compile(r"aten::(bmm|mm|matmul|baddbmm|addmm|addbmm|einsum)")
SDPA_MATH = "aten::_scaled_dot_product_attention_math"


def detect_kernel(prof, device: torch.device, top: int = 3) -> str:
    """The attention operator of a profiled call: a fused attention op (SDPA's flash/efficient/cuDNN
    kernels, Triton, FlexAttention) when one ran, else the matrix products, then the other compute
    operators, each by self time (allocation, view, fill and comparison ops skipped). SDPA's math
    path is named as such."""
    events = [e for e in prof.key_averages() if not _NOT_KERNEL.fullmatch(e.key)]
    t = (
        (lambda e: getattr(e, "self_device_time_total", 0))
        if device.type == "cuda"
        else (lambda e: e.self_cpu_time_total)
    )
    if device.type != "cuda":
        events = [
            e
            for e in events
            if e.key.startswith(("aten::", "triton", "torch_dynamo", "Torch-Compiled", "CompiledFunction", "flex"))
        ] or events
    ranked = sorted((e for e in events if t(e) > 0),
                    key=lambda e: (not _ATTENTION.search(e.key), not _MATMUL.fullmatch(e.key), -t(e)))
    names = ", ".join(e.key for e in ranked[:top]) or "unknown"
    if any(e.key == SDPA_MATH for e in prof.key_averages()):
        return f"sdpa math path ({SDPA_MATH}): {names}"
    return names


ORACLE_CACHE = 4  # fp64 oracle outputs kept per worker (the backends of one case share inputs)
_oracles: dict = {}


def oracle(variant, problem: Problem, q, k, v, key=None) -> dict:
    """The fp64 oracle outputs {"ref", "full", "own"} for these inputs; with a key (variant, problem,
    inputs, seed) the last ORACLE_CACHE are kept, so the backends of one case (same inputs: the same
    seed) compute it once. The outputs are small (B·Hq·Lq·D); the scores are not kept."""
    if key is not None and key in _oracles:
        return _oracles[key]
    with torch.no_grad():
        q64, k64, v64 = (t.detach().double() for t in (q, k, v))
        res = {"ref": variant.reference(q64, k64, v64, problem)}
        if variant.full_attention_error or not variant.exact:
            res["full"] = exact_reference(q64, k64, v64, problem)
        if variant.oracle == "eager":  # an approximation's own computation: its eager formulation
            res["own"] = variant.backend("eager").build(problem, q.device)(q64, k64, v64)
    if key is not None:
        while len(_oracles) >= ORACLE_CACHE:
            _oracles.pop(next(iter(_oracles)))
        _oracles[key] = res
    return res


def compute_error(
    variant, problem: Problem, out: torch.Tensor, q, k, v, limit: int | None = None, key=None, backend: str = ""
) -> dict | None:
    """Error of the forward output against an fp64 oracle: the variant's reference computed in
    float64 from the same inputs (every backend, eager included: never the output against itself),
    and, for patterns and approximations, against full softmax attention in float64 (`full_*`).
    An approximation (oracle "eager"), whose reference is exact attention, also gets `own_rel_l2`/
    `own_max_abs`: against its own eager formulation fed the fp64 inputs (same random features),
    the quantity its correctness is judged by (core/correctness.py); its distance from exact
    attention is its approximation error. Honest limits: the eager formulations of linear,
    performer and reformer compute in float32 whatever the input dtype, so that oracle is a float32
    one there; the `eager` backend itself gets `own_reason` instead (it would be compared with
    itself). `judged_by` names the key that holds the error against the record's own oracle (what
    core/correctness.py judges). None with reason if too large. rel_l2 ≥ 1 is worse than returning zeros (an all-zero
    output has 1)."""
    elems = reference_scores(problem)
    limit = REFERENCE_LIMIT if limit is None else limit
    if elems > limit:
        return {
            "reason": f"reference too large ({elems:.2e} scores > {limit:.1e}"
            + (", the suite's reference_limit)" if limit != REFERENCE_LIMIT else ")")
        }
    refs = oracle(variant, problem, q, k, v, key)
    result = {"vs": "fp64 reference", **accuracy.errors(out, refs["ref"])}
    if "full" in refs:
        full = accuracy.errors(out, refs["full"])
        result |= {"full_rel_l2": full["rel_l2"], "full_max_abs": full["max_abs"]}
    if "own" in refs and backend == "eager":
        result["own_reason"] = "the eager backend is this approximation's own formulation (its oracle)"
    elif "own" in refs:
        own = accuracy.errors(out, refs["own"])
        result |= {"own_rel_l2": own["rel_l2"], "own_max_abs": own["max_abs"], "judged_by": "own_rel_l2"}
    else:
        result["judged_by"] = "rel_l2"
    return result


def shown_error(error: dict | None) -> float | None:
    """The error tables show: against full attention where measured, else against the reference."""
    error = error or {}
    return error.get("full_rel_l2", error.get("rel_l2"))


def measure_timing(call: Callable[[], object], device: torch.device, policy: TimingPolicy, nvml,
                   mode: str, keep_throttled: bool = False, cuda_graph: bool = False
                   ) -> tuple[Timing, Stats, dict, dict]:
    """Time the call with the clock sampler running (measure/clocks.py): (timing, the statistics of
    the samples kept, the record's `clocks`, the record's `timing`). With cuda_graph the replays of a
    captured graph are timed (measure/graphs.py) where that is possible and checked; otherwise
    `timing.cuda_graph` says why and per-call timing gives the figure (`timing.mode` says which)."""
    graph = None
    timing = None
    with clocks.Sampler(nvml) as sampler:
        if cuda_graph:
            why = graphs.unavailable_reason(device, mode)
            if why:
                graph = {"status": "unavailable", "reason": why}
            else:
                timing, graph = graphs.time_graph(call, policy)
        if timing is None:
            timing = time_call(call, device, policy)
    flags = clocks.flag_samples(timing.spans, sampler.readings)
    kept = clocks.kept_samples(timing.samples_ms, flags, keep_throttled)
    clk = clocks.summary(nvml, sampler.readings, flags, len(timing.samples_ms) - len(kept), keep_throttled)
    fields = {"calls_per_sample": timing.calls_per_sample, "stopped_by": timing.stopped_by, "mode": timing.mode,
              "l2_flush_bytes": timing.l2_flush_bytes, "cuda_graph": graph}
    return timing, Stats.of(kept), clk, fields


def case_energy(call: Callable[[], object], device: torch.device, nvml, p: Problem, median_ms: float,
                max_loop_s: float) -> dict:
    """The record's `energy` (measure/energy.py): NVML's counter on a GPU, RAPL on a CPU."""
    meter = energy.meter_for(device.type, nvml)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return energy.measure(call, sync, meter, median_ms / 1e3, p.batch * p.seq_q, max_loop_s)


def case_flags(stats_dict: dict, tel: dict | None, frac_reason: str | None, error: dict | None,
               clk: dict | None = None) -> list[str]:
    """The record's flags (results.FLAGS): timing, throttling, roof, worse-than-zeros error."""
    flags = timing_flags(stats_dict)
    if (tel or {}).get("throttled") or (clk or {}).get("throttled_samples"):
        flags.append("throttled")
    if frac_reason:
        flags.append("above_roof")
    err = shown_error(error)
    if err is not None and err >= 1:
        flags.append("worse_than_zeros")
    return flags


def run_case(
    case: Case,
    device: torch.device,
    policy: TimingPolicy,
    refs: dict | None,
    nvml: telemetry.Nvml | None = None,
    profile_dir: str | None = None,
    inputs: str = "randn",
    reference_limit: int | None = None,
    keep_throttled: bool = False,
    cuda_graph: bool = False,
    energy_max_s: float | None = None,
) -> dict:
    """Measure one runnable case; returns the measured fields of its record."""
    variant = registry.get(case.variant)
    backend = variant.backend(case.backend)
    p = case.problem
    torch.manual_seed(0)
    q, k, v = make_inputs(variant, p, device, inputs=inputs)
    if p.needs_grad:
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    nvml = nvml or telemetry.Nvml()
    before = nvml.snapshot()
    t0 = time.perf_counter()
    fn = backend.build(p, device)
    setup_ms = (time.perf_counter() - t0) * 1e3
    checked = user_check(variant, backend, fn, case, q, k, v, device, inputs, reference_limit)
    if checked and checked.get("status") == "wrong":
        return {**checked, "setup_ms": setup_ms}
    call = mode_call(fn, q, k, v, p)
    timing, stats, clk, timing_fields = measure_timing(call, device, policy, nvml, p.mode, keep_throttled, cuda_graph)
    spent = case_energy(call, device, nvml, p, stats.median, energy_max_s or policy.max_time)
    peak, kernel = measure_memory_and_kernel(call, device, nvml)
    if profile_dir:
        save_trace(
            call, device, Path(profile_dir) / f"{case_id(p.as_dict(), case.variant, case.backend, device.type)}.json"
        )
    error, entropy = None, None
    if p.mode in ("fwd", "decode"):
        try:
            error = compute_error(
                variant, p, peak.output, q, k, v, reference_limit, key=(case.variant, p, inputs, device.type),
                backend=case.backend,
            )
            if backend.tf32_dots and device.type == "cuda" and p.dtype == "float32":
                error["dots"] = "tf32"  # its budget is TF32's (core/correctness.py), not float32's
            # entropy needs one (B, H, L, D) batch with q and k of one width: not MLA's latent cache,
            # not a ragged (paged) batch
            if "reason" not in error and q.shape[-1] == k.shape[-1] and p.param("seq_dist") is None \
                    and p.param("batch_spec") is None:
                entropy = mean_entropy(q.detach().cpu(), k.detach().cpu(), p.causal)
        except (MemoryError, RuntimeError) as e:  # the reference alone must not cost the case
            if not ("memory" in str(e).lower() or isinstance(e, MemoryError)):
                raise
            error = {"reason": f"the fp64 reference did not fit: {' '.join(str(e).split())[:120]}"}
    after = nvml.snapshot()
    flops = fl.mode_flops(variant.flops(p), p.mode)
    nbytes = fl.mode_bytes(variant.bytes(p), p.mode)
    tflops = fl.rate(flops, stats.median, 1e12)
    gbps = fl.rate(nbytes, stats.median, 1e9)
    roof = refs_mod.roof(flops, nbytes, variant.bytes(p), p.dtype, refs)
    frac = roofline_fraction(flops, stats.median, roof)
    why_above = refs_mod.above_roof_reason(frac, roof, p.dtype, refs)
    tel = telemetry.summarize(nvml, before, after)
    busy = contention.judge(device.type, contention.load_average(), contention.usable_cores(),
                            torch.get_num_threads(), ((refs or {}).get("gemm") or {}).get(p.dtype))
    return {
        "status": "ok",
        "reason": None,
        "latency_ms": stats.__dict__,
        "samples_ms": list(timing.samples_ms),
        "setup_ms": setup_ms,
        "first_call_ms": timing.first_call_ms,
        "peak_mem_bytes": peak.bytes,
        "mem_source": peak.source,
        "flops": flops,
        "bytes": nbytes,
        "kv_cache_bytes": (variant.kv_cache_bytes or kv_cache_bytes)(p),
        "tflops": tflops,
        "gbps": gbps,
        "roofline_frac": frac,
        "roof": roof and {**roof, "reason": why_above},
        "error": error,
        "kernel": kernel,
        "threads": torch.get_num_threads(),
        "telemetry": tel,
        "timing": {**timing_fields, "contention": busy.why},
        "clocks": clk,
        "energy": spent,
        "inputs": inputs,
        "attn_entropy": entropy,
        "flags": case_flags(stats.__dict__, tel, why_above, error, clk) + (["contended"] * busy.contended),
        **cost_parts(variant, p),
        **(checked or {}),
    }


def user_check(variant, backend, fn, case: Case, q, k, v, device: torch.device, inputs: str,
               reference_limit: int | None) -> dict | None:
    """A backend from outside attnbench (Backend.source) is checked against the oracle before it
    is timed (run/precheck.py): {"precheck", "backend_source"} when it passed, the refused
    record's fields (status wrong) when not; None for a built-in backend (not checked here)."""
    if backend.source is None:
        return None
    p = case.problem

    def error_of(out):
        return compute_error(variant, p, out, q, k, v, reference_limit, key=(case.variant, p, inputs, device.type))

    check = precheck(variant, backend, fn, p, q, k, v, device, error_of)
    source = {"backend_source": backend.source.as_dict()}
    return source | (refusal(check, p) if not check["passed"] else {"precheck": check})


def cost_parts(variant, p: Problem) -> dict:
    """{"cost_parts": {part: {flops, bytes}}} scaled by the mode, for variants whose cost has parts; else {}."""
    if variant.cost_parts is None:
        return {}
    parts = variant.cost_parts(p)
    scaled = {name: {"flops": fl.mode_flops(c["flops"], p.mode), "bytes": fl.mode_bytes(c["bytes"], p.mode)}
              for name, c in parts.items()}
    return {"cost_parts": scaled}


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
    return {
        "status": "ok",
        "reason": None,
        "peak_mem_bytes": peak.bytes,
        "mem_source": peak.source,
        "wall_s": time.perf_counter() - t0,
    }


def roofline_fraction(flops: float, median_ms: float, roof: dict | None) -> float | None:
    """Achieved FLOP/s over the case's roof (measure/refs.py roof: min(in-run GEMM best,
    intensity × the copy bandwidth at the case's working set))."""
    if not roof or not median_ms or not roof["flops_per_s"] > 0:
        return None
    return flops / (median_ms * 1e-3) / roof["flops_per_s"]
