"""Run one case of `run --definition` in the worker: the workload's inputs, one backend (ours, or
the definition's own reference code as backend `reference`), timing, memory, and the check of its
`output` and base-2 `lse` against the oracle (gdn: `output` and `new_state`, no lse).

The oracle: with --trust-reference, the definition's `reference` (code from the file, executed here
in the worker only, never in the parent); without it, attnbench's float64 materialised attention
(variants/fitrace/ops.py `oracle`; gdn: the recurrence in float64), and the record says the
definition's reference was not run and why. The `reference` backend itself is checked against
that float64 oracle (never against its own output). The bound: measure/trace_check.py. The
oracle's outputs are cached per workload (the backends of one workload share its inputs: the same
seed), the last ORACLE_CACHE of them.

Honest limits: a definition's reference runs with this process's rights (hence --trust-reference);
an exception in it fails the case with its message.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from attnbench.core.fitrace import Definition, Workload, load_definition, load_workloads
from attnbench.core.results import timing_flags
from attnbench.measure.timing import TimingPolicy
from attnbench.measure.trace_check import reference_check, state_check
from attnbench.run.case import measure_memory_and_kernel, measure_timing
from attnbench.run.plan import Case
from attnbench.variants.fitrace import gdn, ops
from attnbench.variants.fitrace.inputs import build_inputs
from attnbench.variants.fitrace.layout import layout_of

ORACLE_CACHE = 2
_oracles: dict = {}
NOT_TRUSTED = ("the definition's reference was not run: it is code from the file, run only with "
               "--trust-reference; checked against attnbench's float64 attention instead")


def is_trace(case: Case) -> bool:
    """A case of `run --definition` (its problem names the definition file)."""
    return case.problem.param("definition") is not None


def workload_of(p, d: Definition) -> Workload:
    """The case's workload: by uuid from its workloads file, or the axes the plan derived."""
    if p.param("workloads"):
        return load_workloads(Path(p.param("workloads")), d, [p.param("workload")])[0]
    axes = json.loads(p.param("axes"))
    return Workload(uuid="", axes=axes, inputs={n: {"type": "random"} for n in d.inputs})


def reference_fn(d: Definition):
    """The definition's `run` function (exec of its reference code in a namespace of its own)."""
    namespace: dict = {"__name__": f"fitrace_reference_{d.name}"}
    exec(compile(d.reference, f"<reference of {d.name}>", "exec"), namespace)  # noqa: S102  (--trust-reference)
    if not callable(namespace.get("run")):
        raise ValueError(f"the reference of {d.name} defines no run() function")
    run = namespace["run"]
    return lambda x: _pair(run(**x))


def _pair(result) -> tuple:
    """(output, lse or None) from what a reference or backend returned."""
    if isinstance(result, (tuple, list)):
        return result[0], (result[1] if len(result) > 1 else None)
    return result, None


def _oracle(d: Definition, w: Workload, inputs: dict, trusted: bool, key) -> tuple:
    if key in _oracles:
        return _oracles[key]
    with torch.no_grad():
        res = reference_fn(d)(inputs) if trusted else ops.oracle(d.op_type, d.stage, inputs)
    while len(_oracles) >= ORACLE_CACHE:
        _oracles.pop(next(iter(_oracles)))
    _oracles[key] = res
    return res


def cost(d: Definition, inputs: dict) -> tuple[float, float, dict]:
    """(FLOPs, bytes, the record's seq_lengths {min, mean, max, total} of the keys) of one call:
    2·Hq·(Dqk + Dv) per attended pair; the queries, the keys and values of every sequence read once
    and the output written once (gdn: variants/fitrace/gdn.py `cost`)."""
    if d.op_type == "gdn":
        return gdn.cost(d.stage, inputs)
    lay = layout_of(d.op_type, d.stage, inputs)
    q = inputs["q"] if "q" in inputs else torch.cat([inputs["q_nope"][:1], inputs["q_pe"][:1]], dim=-1)
    hq, dqk = q.shape[1], q.shape[-1]
    dv = inputs["v"].shape[-1] if "v" in inputs else (inputs["v_cache"].shape[-1] if "v_cache" in inputs
                                                       else inputs["ckv_cache"].shape[-1])
    hkv = inputs["k"].shape[1] if "k" in inputs else (inputs["k_cache"].shape[2] if "k_cache" in inputs else 1)
    item = q.element_size()
    tokens, rows = sum(lay.kv_len), sum(lay.q_len)
    flops = 2.0 * hq * (dqk + dv) * lay.attended_pairs()
    kv_width = dqk + dv if "ckv_cache" not in inputs else dqk  # MLA: v is the latent part of the one cache row
    nbytes = float(item * (rows * hq * dqk + tokens * hkv * kv_width + rows * hq * dv) + 4 * rows * hq)
    n = lay.kv_len
    stats = {"min": min(n), "mean": tokens / len(n), "max": max(n), "total": tokens} if n else None
    return flops, nbytes, stats


def _error(out: torch.Tensor, ref: torch.Tensor, vs: str) -> dict:
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    fin = torch.isfinite(r) & torch.isfinite(o)
    diff = (o - r)[fin]
    denom = r[fin].norm().item()
    return {"vs": vs, "rel_l2": diff.norm().item() / denom if denom > 0 else diff.norm().item(),
            "max_abs": diff.abs().max().item() if diff.numel() else 0.0}


def run_trace_case(case: Case, device: torch.device, policy: TimingPolicy, nvml, keep_throttled: bool = False,
                   cuda_graph: bool = False, **_: object) -> dict:
    """Measure one runnable definition case; returns the measured fields of its record."""
    p = case.problem
    d = load_definition(Path(p.param("definition")))
    w = workload_of(p, d)
    blobs = Path(p.param("blobs")) if p.param("blobs") else None
    inputs, notes = build_inputs(d, w, blobs, device, seed=0, lengths=p.param("lengths"))
    trusted = bool(p.param("trust_reference"))
    t0 = time.perf_counter()
    if case.backend == ops.REFERENCE:
        fn, lse_reason = reference_fn(d), "the definition's reference returns no lse"
        if d.op_type == "gdn":
            lse_reason = ops.NO_LSE_GDN
    else:
        b = ops.backend(case.backend, d.op_type)
        fn, lse_reason = b.build(d.op_type, d.stage, inputs, device), b.lse_reason(device, d.op_type)
    setup_ms = (time.perf_counter() - t0) * 1e3
    call = lambda: fn(inputs)  # noqa: E731
    with torch.no_grad():
        timing, stats, clk, timing_fields = measure_timing(call, device, policy, nvml, p.mode, keep_throttled,
                                                           cuda_graph)
        peak, kernel = measure_memory_and_kernel(call, device, nvml)
    out, lse = _pair(peak.output)
    # the definition's reference is checked against attnbench's float64 attention, never against itself
    by_definition = trusted and case.backend != ops.REFERENCE
    key = (str(p.param("definition")), p.param("workload"), p.param("axes"), p.param("lengths"), by_definition,
           device.type)
    ref_out, ref_lse = _oracle(d, w, inputs, by_definition, key)
    flops, nbytes, lengths = cost(d, inputs)
    out_dtype = next(iter(d.outputs.values())).dtype
    longest = max(1, lengths["max"] if lengths else 1)
    who = "definition" if by_definition else "attnbench-fp64"
    if d.op_type == "gdn":  # (output, new_state): no lse, the state checked in its place
        check = reference_check(out, None, ref_out, None, out_dtype, longest, who, lse_reason)
        check = state_check(check, lse, ref_lse, longest, inputs["q"].shape[-1])
    else:
        check = reference_check(out, lse, ref_out, ref_lse, out_dtype, longest, who, lse_reason)
    if not trusted:
        check["note"] = NOT_TRUSTED if d.op_type != "gdn" else NOT_TRUSTED.replace("attention", "gated delta rule")
    med = stats.median
    return {
        "status": "ok", "reason": None, "latency_ms": stats.__dict__, "samples_ms": list(timing.samples_ms),
        "setup_ms": setup_ms, "first_call_ms": timing.first_call_ms, "peak_mem_bytes": peak.bytes,
        "mem_source": peak.source, "flops": flops, "bytes": nbytes,
        "tflops": flops / (med * 1e-3) / 1e12 if med and med > 0 else None,
        "gbps": nbytes / (med * 1e-3) / 1e9 if med and med > 0 else None,
        "error": _error(out, ref_out, "definition reference" if by_definition else "fp64 reference"),
        "kernel": kernel, "threads": torch.get_num_threads(), "timing": timing_fields, "clocks": clk,
        "reference_check": check, "workload_notes": notes or None,
        "seq_lengths": lengths, "seq_dist": "workload" if p.param("workload") else p.param("seq_dist_given"),
        "padding_frac": 1.0 - lengths["total"] / (p.batch * lengths["max"]) if lengths and lengths["max"] else None,
        "flags": timing_flags(stats.__dict__),
    }
