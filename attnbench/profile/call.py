"""Profile one attention call: where its time and memory go.

Builds a case exactly as `attnbench run` does (sweep expansion decides unsupported cases,
variants.inputs.make_inputs / run.case.mode_call build the call), then runs torch.profiler twice:

  * the setup profile: ``backend.build`` inside ``record_function("attnbench.setup")``;
  * the call profile, after ``warmup`` untimed calls: each call inside
    ``record_function("attnbench.call")``, CPU activity always, CUDA when present,
    ``record_shapes=True, profile_memory=True`` (``with_stack`` on request).

From them it derives the top operators/kernels by self time, the kernels that did the
attention (cross-checked against ``run.case.detect_kernel``, the ``kernel`` field of `run`),
the named ranges (phases such as ``reformer.hash``) and, in profile/memory.py, the memory
timeline, its chart and a verdict against ``measure.cost.predict_peak_bytes``.

Honest limits: profiler overhead inflates the time of small operators (read shares, not
absolute times, and use `attnbench run` for latency); ranges opened in the forward code do not
reach the autograd backward (bwd modes show ``autograd::engine`` ops instead); on the CPU the
profiler counts only allocations made while it runs, so the memory curve starts at the bytes of
the inputs (q, k, v) and, in bwd modes, misses what the forward left alive.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.profiler import record_function

from attnbench.core.errors import UsageError
from attnbench.measure.inputs import make_inputs
from attnbench.measure.trace import CALL, SETUP, is_range_name, profile_calls, profiler, quiet_stderr, save_trace, sync
from attnbench.run.case import detect_kernel, measure_memory_and_kernel, mode_call
from attnbench.run.plan import Case, expand, make_sweep
from attnbench.run.worker import case_key
from attnbench.variants import registry

# Operators and kernels that do the attention itself (matmuls, softmax, fused SDPA, Triton).
ATTENTION_OP = re.compile(r"scaled_dot_product|flash|efficient_attention|cudnn|fmha|attn|flex|"
                          r"bmm|\bmm\b|::mm$|matmul|einsum|softmax|gemm|triton|Compiled", re.I)


# ---------------------------------------------------------------- the case
def resolve_case(variant: str, backend: str, device: torch.device, **axes: Any) -> Case:
    """One case from single-valued axes, decided as the runner decides it."""
    cases = expand([make_sweep(variants=variant, backends=backend, **axes)], device)
    if len(cases) != 1:
        raise UsageError(f"profile runs one case; these options give {len(cases)}: give one value per axis")
    case = cases[0]
    if case.status is not None:
        raise UsageError(f"{case.variant}/{case.backend} is {case.status} for {case.problem.short()} "
                         f"{case.problem.dtype} {case.problem.mode} on {device.type}: {case.reason}")
    return case


def parse_params(items: list[str] | None, variant: str) -> dict[str, Any]:
    """'name=value' items, each checked against the variant's declared parameters and cast
    to the type of its default."""
    from attnbench.run.plan import check_params, parse_param_items

    return check_params(parse_param_items(items), (variant,))


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class OpRow:
    """One line of key_averages(): times in microseconds, memory in bytes (self, net)."""

    name: str
    calls: int
    self_us: float
    total_us: float
    share: float  # of the summed self time of its table
    self_mem: int


@dataclass(frozen=True)
class PhaseRow:
    where: str  # "setup" | "call"
    name: str
    calls: int
    cpu_us: float
    device_us: float
    share: float  # of attnbench.setup / attnbench.call


@dataclass(frozen=True)
class Report:
    case: Case
    device: str
    case_id: str
    warmup: int
    calls: int
    ops: tuple[OpRow, ...]  # CPU operators by self CPU time
    kernels: tuple[OpRow, ...]  # device kernels by self device time (empty on the CPU)
    attention: tuple[str, ...]  # the ops/kernels that did the attention, by self time
    path: str  # which way the attention went (fused SDPA, math, compiled, ...)
    detected: str  # the kernel field `run` records (run.case.detect_kernel on its own profile)
    agreement: str  # "agree" | "partly" | "disagree"
    run_peak: int | None  # the peak_mem_bytes `run` records (VmHWM rise / allocator peak)
    run_peak_source: str
    phases: tuple[PhaseRow, ...]
    memory: Any  # profile.memory.Memory
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("case", "memory")}
        d["case"] = {"variant": self.case.variant, "backend": self.case.backend, **self.case.problem.as_dict()}
        d["memory"] = self.memory.to_json()
        return d


# ---------------------------------------------------------------- profiling
def prepare(case: Case, device: torch.device, setup_prof: bool = True):
    """(inputs, call, setup profile or None): inputs as run_case makes them, the backend built
    inside the attnbench.setup range."""
    variant = registry.get(case.variant)
    p = case.problem
    torch.manual_seed(0)
    q, k, v = make_inputs(variant, p, device)
    if p.needs_grad:
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    prof = None
    if setup_prof:
        with quiet_stderr(), profiler(device) as prof:
            with record_function(SETUP):
                fn = variant.backend(case.backend).build(p, device)
            sync(device)
    else:
        fn = variant.backend(case.backend).build(p, device)
    return (q, k, v), mode_call(fn, q, k, v, p), prof


def profile_case(case: Case, device: torch.device, out_dir: Path, *, warmup: int = 2, calls: int = 1,
                 with_stack: bool = False, top: int = 15) -> Report:
    """Profile one case; write trace.json (with Python frames when with_stack),
    setup_trace.json, memory.png and summary.json under out_dir."""
    from attnbench.profile import memory as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    (q, k, v), call, setup_prof = prepare(case, device)
    for _ in range(warmup):
        call()
        sync(device)
    prof = profile_calls(call, device, calls, with_stack)
    files = {"trace": out_dir / "trace.json", "setup_trace": out_dir / "setup_trace.json",
             "memory_chart": out_dir / "memory.png", "summary": out_dir / "summary.json"}
    prof.export_chrome_trace(str(files["trace"]))
    setup_prof.export_chrome_trace(str(files["setup_trace"]))
    averages = prof.key_averages()
    ops, kernels = op_rows(averages, device, top)
    ranked = detect_kernel(prof, device, top=12).split(", ")  # the same rule as `run`
    detected, run_peak, run_peak_source = record_fields(call, device)
    inputs_bytes = sum(t.numel() * t.element_size() for t in (q, k, v))
    memory = pm.analyse(files["trace"], case, device, inputs_bytes)
    pm.chart(memory, files["memory_chart"], title=f"{case.variant}/{case.backend}  {case.problem.short()}  "
             f"{case.problem.dtype} {case.problem.mode} on {device.type}")
    report = Report(case=case, device=device.type,
                    case_id=case_key(case, device),
                    warmup=warmup, calls=calls, ops=ops, kernels=kernels,
                    attention=tuple(n for n in ranked if ATTENTION_OP.search(n)),
                    path=attention_path(ranked, device), detected=detected,
                    agreement=agreement(detected, ranked), memory=memory,
                    run_peak=run_peak, run_peak_source=run_peak_source,
                    phases=phase_rows(setup_prof.events(), "setup", SETUP) + phase_rows(prof.events(), "call", CALL),
                    files={k: str(v) for k, v in files.items()})
    files["summary"].write_text(json.dumps(report.to_json(), indent=2, default=str), encoding="utf-8")
    return report


# ---------------------------------------------------------------- tables
def _get(e, *names: str, default: float = 0.0) -> float:
    for n in names:
        if hasattr(e, n):
            return getattr(e, n) or 0
    return default


def _is_device(e) -> bool:
    return str(getattr(e, "device_type", "")).endswith(("CUDA", "PrivateUse1"))


def op_rows(averages, device: torch.device, top: int) -> tuple[tuple[OpRow, ...], tuple[OpRow, ...]]:
    """(CPU operators by self CPU time, device kernels by self device time), `top` each."""
    cpu = [e for e in averages if not _is_device(e) and not is_named_range(e)]  # ranges: the phase table
    dev = [e for e in averages if _is_device(e)]
    cuda = device.type == "cuda"
    mem_attr = ("self_device_memory_usage", "self_cuda_memory_usage") if cuda else ("self_cpu_memory_usage",)

    def rows(events, self_attr, total_attr, mem):
        total = sum(_get(e, *self_attr) for e in events) or 1.0
        ranked = sorted(events, key=lambda e: -_get(e, *self_attr))[:top]
        return tuple(OpRow(e.key, e.count, _get(e, *self_attr), _get(e, *total_attr), _get(e, *self_attr) / total,
                           int(_get(e, *mem)) if mem else 0) for e in ranked if _get(e, *self_attr) > 0)

    ops = rows(cpu, ("self_cpu_time_total",), ("cpu_time_total",), mem_attr)
    kernels = rows(dev, ("self_device_time_total", "self_cuda_time_total"),
                   ("device_time_total", "cuda_time_total"), ()) if device.type == "cuda" else ()
    return ops, kernels


def record_fields(call: Callable[[], object], device: torch.device) -> tuple[str, int | None, str]:
    """The `kernel` and `peak_mem_bytes` fields `attnbench run` records for this call, measured
    the way it measures them (an independent profile and peak probe): (kernel, bytes, source)."""
    from attnbench.measure import telemetry

    nvml = telemetry.Nvml() if device.type == "cuda" else None
    peak, kernel = measure_memory_and_kernel(call, device, nvml)
    return kernel, peak.bytes, peak.source


def attention_path(names: list[str], device: torch.device) -> str:
    """Which way the attention went, read from the operator/kernel names."""
    text = " ".join(names).lower()
    rules = (("_scaled_dot_product_flash_attention_for_cpu", "torch SDPA, fused flash kernel for the CPU"),
             ("_scaled_dot_product_flash_attention", "torch SDPA, FlashAttention kernel"),
             ("_efficient_attention", "torch SDPA, memory-efficient kernel"),
             ("cudnn", "torch SDPA, cuDNN attention"),
             ("flash", "a FlashAttention kernel"),
             ("triton", "Triton kernels (hand-written or generated by torch.compile)"),
             ("compiled", "a torch.compile'd region (FlexAttention or inductor)"),
             ("_scaled_dot_product_attention_math", "torch SDPA, math path (materialised scores)"))
    for needle, label in rules:
        if needle in text:
            return label
    if "bmm" in text or "matmul" in text or "gemm" in text or "::mm" in text:
        if "softmax" in text:
            return "math: materialised scores (matmul + softmax + matmul)"
        return "matrix products without a softmax (feature maps / linear attention, no Lq×Lk scores)"
    return "no recognised attention kernel; read the operator table"


def agreement(detected: str, ranked: list[str]) -> str:
    """Does the kernel field (from run's own profile) name the same top kernels as this one?
    Timing noise reorders near-ties, so 'agree' asks each side's first name to be in the
    other's top three."""
    theirs = [s.strip() for s in detected.split(",") if s.strip()]
    mine = ranked[:3]
    if theirs and mine and theirs[0] in mine and mine[0] in theirs:
        return "agree"
    return "partly" if set(theirs) & set(mine) else "disagree"


def phase_rows(events, where: str, root: str) -> tuple[PhaseRow, ...]:
    """Time summed by named range (user annotations named like 'family.phase'), found
    generically: every range present, whoever opened it."""
    sums: dict[str, list[float]] = {}
    for e in events:
        if _is_device(e) or not is_named_range(e):
            continue
        s = sums.setdefault(e.name, [0, 0.0, 0.0])
        s[0] += 1
        s[1] += e.cpu_time_total
        s[2] += _get(e, "device_time_total", "cuda_time_total")
    base = (sums.get(root) or [0, 0.0, 0.0])[1] or 1.0
    order = sorted(sums, key=lambda n: (n != root, -sums[n][1]))
    return tuple(PhaseRow(where, n, int(sums[n][0]), sums[n][1], sums[n][2], sums[n][1] / base) for n in order)


def is_named_range(e) -> bool:
    """A record_function range (user annotation) named 'family.phase'."""
    name = getattr(e, "name", None) or e.key  # FunctionEvent has name, FunctionEventAvg key
    annotated = getattr(e, "is_user_annotation", None)
    if annotated is None:  # older torch: no flag; ranges are what is not an operator
        annotated = "::" not in name
    return bool(annotated) and is_range_name(name)


# ---------------------------------------------------------------- for `run --profile-dir`
def save_case_trace(case: Case, device: torch.device, out_dir: Path,
                    call: Callable[[], object] | None = None) -> Path:
    """A Perfetto/chrome trace of one call of the case, saved as out_dir/<case_id>.json.

    Pass an already built `call` to avoid building the backend again; without it the case is
    built here and called once untimed first (run_case traces with measure.trace.save_trace)."""
    if call is None:
        _, call, _ = prepare(case, device, setup_prof=False)
        call()
        sync(device)
    return save_trace(call, device, Path(out_dir) / f"{case_key(case, device)}.json")
