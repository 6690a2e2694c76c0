"""The runner: cases run one by one in an isolated worker process.

Out of memory (an allocator error, or the worker killed by the OS) becomes `oom`; a crash
becomes `error` with the signal; a case over its time budget becomes `timeout` and the worker
is restarted. Cases predicted not to fit the free memory or the time budget are `skipped`
with the prediction. Whatever happens, the sweep goes on and every case gets a record.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import time
import traceback
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import torch

from . import registry
from .measure import memory
from .measure.timing import TimingPolicy
from .results import case_id
from .sweep import Case

CALLS_PER_CASE = 4  # first call, a steady warm-up call, at least one timed sample, the memory/profiler pass
STARTUP_GRACE_S = 60.0  # worker start, setup and compilation on top of the budget


@dataclass(frozen=True)
class RunConfig:
    device: torch.device
    time_budget: float = 30.0  # seconds per case, setup and measurement included
    threads: int | None = None
    mem_limit: int | None = None  # bytes a case may allocate; enforced in the worker
    profile_dir: str | None = None  # save a trace of one call per case here
    policy: TimingPolicy = TimingPolicy(min_samples=10, min_time=0.2, max_time=2.0, target_rel_iqr=0.1)
    inputs: str = "randn"  # measure/inputs.py: randn | peaked
    reference_limit: int | None = None  # score elements of the fp64 oracle (None: execute.REFERENCE_LIMIT)


# ---------------------------------------------------------------------------- worker side
def limit_memory(device: torch.device, nbytes: int) -> None:
    """Make allocations past `nbytes` fail in this process: RLIMIT_DATA above the current data
    segment on the CPU (torch then raises "can't allocate memory"), the allocator's per-process
    fraction on a GPU."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, nbytes / total), device)
        return
    import re
    import resource

    with open("/proc/self/status") as f:
        data = int(re.search(r"^VmData:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (data + nbytes, resource.RLIM_INFINITY))


def _worker_main(conn, device: str, threads: int | None, mem_limit: int | None = None,
                 profile_dir: str | None = None) -> None:
    from .execute import probe_case, run_case
    from .measure import refs as refs_mod, telemetry

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops between cases
    memory.timing_allocator()  # peak_cpu switches to its own state for its one call
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if mem_limit:
        limit_memory(dev, mem_limit)
    nvml = telemetry.Nvml() if dev.type == "cuda" else telemetry.Nvml.__new__(telemetry.Nvml)
    if dev.type != "cuda":
        nvml.handle, nvml.reason = None, "no CUDA device (CPU run)"
    refs = None
    warm_memory_pass(dev, nvml)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        kind, payload = msg
        if kind == "stop":
            return
        if kind == "refs":
            refs = refs_mod.measure(dev, tuple(payload))
            conn.send(("refs", refs))
            continue
        if kind == "refs-set":
            refs = payload
            continue
        case, policy, options = payload
        try:
            if kind == "probe":
                conn.send(("record", probe_case(case, dev)))
            else:
                conn.send(("record", run_case(case, dev, policy, refs, nvml, profile_dir, **options)))
        except BaseException as e:  # every failure becomes a record with its reason
            conn.send(("record", failure_fields(e)))
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()


def warm_memory_pass(dev: torch.device, nvml) -> None:
    """One throwaway profiled memory pass on a small matmul: the profiler's and allocator's
    one-time allocations (~0.6 MiB seen here) would otherwise land in the first case's peak."""
    from .execute import measure_memory_and_kernel

    x = torch.ones(64, 64, device=dev)
    measure_memory_and_kernel(lambda: x @ x, dev, nvml)


def failure_fields(e: BaseException) -> dict:
    if _is_oom(e):
        return {"status": "oom", "reason": _one_line(e)}
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" (at {os.path.basename(where.filename)}:{where.lineno})" if where else ""
    return {"status": "error", "reason": f"{type(e).__name__}: {_one_line(e)}{at}"}


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower()))


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", text)  # torch's C++ prefix
    return text[:limit] + ("…" if len(text) > limit else "")


class Worker:
    """A spawned process that runs cases; restarted after a timeout or a crash."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.proc = None
        self.conn = None
        self.refs: dict | None = None

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, str(self.cfg.device), self.cfg.threads, self.cfg.mem_limit,
                                                                self.cfg.profile_dir),
                                daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        if self.refs is not None:
            self.conn.send(("refs-set", self.refs))

    def measure_refs(self, dtypes: tuple[str, ...]) -> dict:
        self._ensure()
        self.conn.send(("refs", list(dtypes)))
        kind, refs = self.conn.recv()
        self.refs = refs
        return refs

    def _ensure(self) -> None:
        if self.proc is None or not self.proc.is_alive():
            self.start()

    def run(self, case: Case, timeout: float, kind: str = "case") -> dict:
        """kind "case" measures everything; "probe" only runs a call and its peak memory."""
        self._ensure()
        policy = replace(self.cfg.policy, max_time=min(self.cfg.policy.max_time, max(0.1, self.cfg.time_budget / 4)))
        options = {"inputs": self.cfg.inputs, "reference_limit": self.cfg.reference_limit}
        self.conn.send((kind, (case, policy, options)))
        if not self.conn.poll(timeout):
            self.kill()
            return {"status": "timeout", "reason": f"no result within {timeout:.0f} s (time budget "
                    f"{self.cfg.time_budget:g} s); the worker was killed and restarted"}
        try:
            return self.conn.recv()[1]
        except (EOFError, ConnectionError):
            self.proc.join(5)
            return self._death_fields()

    def _death_fields(self) -> dict:
        code = self.proc.exitcode
        self.proc = None
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            if -code == signal.SIGKILL:
                return {"status": "oom", "reason": "the worker was killed by SIGKILL, most likely by the "
                        "kernel's out-of-memory killer"}
            return {"status": "error", "reason": f"the worker crashed with {sig}"}
        return {"status": "error", "reason": f"the worker exited with code {code}"}

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(5)
        self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(("stop", None))
                self.proc.join(5)
            except (BrokenPipeError, OSError):
                pass
            self.kill()


# ---------------------------------------------------------------------------- predictions
def predict_peak_bytes(case: Case) -> float:
    """A rough model of a case's peak memory: inputs, outputs, gradients and, for backends
    that materialise scores, two fp32 Lq×Lk tensors per head (scores and probabilities)."""
    p = case.problem
    b = registry.get(case.variant).backend(case.backend)
    q = p.batch * p.heads * p.seq_q * p.head_dim
    kv = p.batch * p.kv_heads * p.seq_k * p.head_dim
    io = (2 * q + 2 * kv) * p.itemsize * (2 if p.needs_grad else 1)
    scores = 2 * p.batch * p.heads * p.seq_q * p.seq_k * 4 if b.materializes else 0
    return io + scores * (1.5 if p.needs_grad else 1.0)


def predict_call_seconds(case: Case, refs: dict | None) -> float | None:
    if not refs:
        return None
    from .measure.flops import mode_flops

    p = case.problem
    gemm = (refs["gemm"].get(p.dtype) or refs["gemm"]["float32"])["flops_per_s"]
    flops = mode_flops(registry.get(case.variant).flops(p), p.mode)
    # attention reaches about half the GEMM rate; materialising backends about a quarter
    efficiency = 0.25 if registry.get(case.variant).backend(case.backend).materializes else 0.5
    return flops / (gemm * efficiency)


def skip_reason(case: Case, cfg: RunConfig, refs: dict | None) -> str | None:
    need = predict_peak_bytes(case)
    free = memory.free_bytes(cfg.device)
    if need > 0.8 * free:
        return f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    secs = predict_call_seconds(case, refs)
    if secs is not None and CALLS_PER_CASE * secs > cfg.time_budget:
        return (f"needs ~{secs:.1f} s per call (predicted from the in-run GEMM rate); the time budget of "
                f"{cfg.time_budget:g} s allows fewer than the {CALLS_PER_CASE} calls a case takes (raise --time-budget)")
    return None


# ---------------------------------------------------------------------------- the loop
def base_record(case: Case, device: torch.device) -> dict:
    pd = case.problem.as_dict()
    return {"case_id": case_id(pd, case.variant, case.backend, device.type),
            "variant": case.variant, "backend": case.backend, "device": device.type, **pd,
            "status": None, "reason": None, "latency_ms": None, "samples_ms": None, "setup_ms": None,
            "first_call_ms": None, "peak_mem_bytes": None, "mem_source": None,
            "mem_model_bytes": predict_peak_bytes(case) if case.status is None else None,
            "flops": None, "bytes": None, "kv_cache_bytes": None, "tflops": None, "gbps": None,
            "roofline_frac": None, "error": None, "kernel": None, "threads": torch.get_num_threads(),
            "telemetry": None, "wall_s": None, "flags": [], "inputs": None, "attn_entropy": None, "roof": None}


def _is_distributed(case: Case) -> bool:
    from .distributed.variant import is_distributed

    return is_distributed(case)


def run_cases(cases: Iterable[Case], cfg: RunConfig, worker: Worker,
              on_record: Callable[[dict], None], refs: dict | None = None) -> None:
    """Run every case, handing each finished record to on_record (which writes it)."""
    for case in cases:
        rec = base_record(case, cfg.device)
        t0 = time.perf_counter()
        if case.status is not None:
            rec.update(status=case.status, reason=case.reason)
        elif (why := skip_reason(case, cfg, refs)) is not None:
            rec.update(status="skipped", reason=why)
        elif _is_distributed(case):  # ranks are spawned from here: the daemonic worker cannot
            from .distributed.launch import run_distributed_case

            rec.update(run_distributed_case(case, cfg))
        else:
            rec.update(worker.run(case, cfg.time_budget + STARTUP_GRACE_S))
        rec["wall_s"] = time.perf_counter() - t0
        rec["inputs"] = rec.get("inputs") or cfg.inputs
        if cfg.threads:
            rec["threads"] = cfg.threads
        on_record(rec)
