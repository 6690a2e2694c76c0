"""The runner: cases run one by one in an isolated worker process.

Out of memory (an allocator error, or the worker killed by the OS) becomes `oom`; a crash
becomes `error` with the signal; a case over its time budget becomes `timeout` and the worker
is restarted. Cases predicted not to fit the free memory or the time budget are `skipped`
with the prediction. Whatever happens, the sweep goes on and every case gets a record.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import signal
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import torch

from attnbench.variants import registry
from attnbench.measure import memory
from attnbench.measure.cost import predict_call_seconds, predict_peak_bytes
from attnbench.measure.failure import failure_fields
from attnbench.measure.timing import TimingPolicy
from attnbench.core.results import case_id
from attnbench.run.plan import Case, is_distributed

CALLS_PER_CASE = 4  # first call, at least one timed sample, the memory/profiler pass, slack
STARTUP_GRACE_S = 60.0  # worker start, setup and compilation on top of the budget


@dataclass(frozen=True)
class RunConfig:
    device: torch.device
    time_budget: float = 30.0  # seconds per case, setup and measurement included
    threads: int | None = None
    mem_limit: int | None = None  # bytes a case may allocate; enforced in the worker
    profile_dir: str | None = None  # save a trace of one call per case here
    policy: TimingPolicy = TimingPolicy(min_samples=10, min_time=0.2, max_time=2.0, target_rel_iqr=0.1)


# ---------------------------------------------------------------------------- worker side
def limit_memory(device: torch.device, nbytes: int) -> None:
    """Make allocations past `nbytes` fail in this process: RLIMIT_DATA above the current data
    segment on the CPU (torch then raises "can't allocate memory"), the allocator's per-process
    fraction on a GPU."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, nbytes / total), device)
        return
    import resource

    with open("/proc/self/status") as f:
        data = int(re.search(r"^VmData:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (data + nbytes, resource.RLIM_INFINITY))


def _worker_main(conn, device: str, threads: int | None, mem_limit: int | None = None,
                 profile_dir: str | None = None) -> None:
    from attnbench.run.case import probe_case, run_case
    from attnbench.measure import refs as refs_mod
    from attnbench.measure import telemetry

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
        case, policy = payload
        try:
            if kind == "probe":
                conn.send(("record", probe_case(case, dev)))
            else:
                conn.send(("record", run_case(case, dev, policy, refs, nvml, profile_dir)))
        except BaseException as e:  # every failure becomes a record with its reason
            conn.send(("record", failure_fields(e)))
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()


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
        self.conn.send((kind, (case, policy)))
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


def _materializes(case: Case) -> bool:
    return registry.get(case.variant).backend(case.backend).materializes


def skip_reason(case: Case, cfg: RunConfig, refs: dict | None) -> str | None:
    need = predict_peak_bytes(case.problem, _materializes(case))
    free = memory.free_bytes(cfg.device)
    if need > 0.8 * free:
        return f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    secs = predict_call_seconds(case.problem, registry.get(case.variant).flops, _materializes(case), refs)
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
            "mem_model_bytes": predict_peak_bytes(case.problem, _materializes(case)) if case.status is None else None,
            "flops": None, "bytes": None, "kv_cache_bytes": None, "tflops": None, "gbps": None,
            "roofline_frac": None, "error": None, "kernel": None, "threads": torch.get_num_threads(),
            "telemetry": None, "wall_s": None}


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
        elif is_distributed(case):  # ranks are spawned from here: the daemonic worker cannot
            from attnbench.distributed.launch import run_distributed_case

            rec.update(run_distributed_case(case, cfg))
        else:
            rec.update(worker.run(case, cfg.time_budget + STARTUP_GRACE_S))
        rec["wall_s"] = time.perf_counter() - t0
        if cfg.threads:
            rec["threads"] = cfg.threads
        on_record(rec)
