"""The runner: cases run one by one in an isolated worker process.

Out of memory (an allocator error, or the worker killed by the OS) becomes `oom`; a crash
becomes `error` with the signal; a case over its time budget becomes `timeout` and the worker
is restarted. Cases predicted not to fit the free memory or the time budget are `skipped`
with the prediction. Whatever happens, the sweep goes on and every case gets a record.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import re
import signal
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import torch

from attnbench.core.results import case_id
from attnbench.measure import memory
from attnbench.measure.cost import predict_call_peak_bytes, predict_call_seconds, predict_peak_bytes
from attnbench.measure.failure import failure_fields, oom_kill_count
from attnbench.measure.timing import TimingPolicy
from attnbench.run.plan import Case, is_distributed
from attnbench.variants import registry
from attnbench.variants.paged import ragged_fields
from attnbench.variants.user import load_or_reason, source_fields

CALLS_PER_CASE = 4  # first call, a steady warm-up call, at least one timed sample, the memory/profiler pass
STARTUP_GRACE_S = 60.0  # a case's setup and compilation on top of the budget
# The worker's own start (spawn, imports, the warm-up pass) is waited for apart from any case's
# clock: on a machine loaded many times over, importing torch alone can take a minute, and a case
# must not be recorded as `timeout` for the machine's load before it even began.
WORKER_START_S = 600.0


@dataclass(frozen=True)
class RunConfig:
    device: torch.device
    time_budget: float = 30.0  # seconds per case, setup and measurement included
    threads: int | None = None
    mem_limit: int | None = None  # bytes a case may allocate; enforced in the worker
    profile_dir: str | None = None  # save a trace of one call per case here
    policy: TimingPolicy = TimingPolicy(min_samples=10, min_time=0.2, max_time=2.0, target_rel_iqr=0.1)
    inputs: str = "randn"  # measure/inputs.py: randn | peaked
    reference_limit: int | None = None  # score elements of the fp64 oracle (None: measure.accuracy.REFERENCE_LIMIT)
    keep_throttled: bool = False  # keep samples taken while the GPU throttled in the statistics
    cuda_graph: bool = False  # time replays of a captured CUDA graph (measure/graphs.py)
    backend_files: tuple[str, ...] = ()  # user backend files (variants/user.py) the worker imports by path


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


def die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux PR_SET_PDEATHSIG), so an
    orphaned worker never runs on, nor prints, after the parent has gone. Elsewhere (or when the
    call fails) a watchdog thread checks every second that the parent is still there."""
    import ctypes
    import threading

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        ok = False
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before the prctl
        os._exit(0)
    if ok or parent_pid is None:
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(
    conn,
    device: str,
    threads: int | None,
    mem_limit: int | None = None,
    profile_dir: str | None = None,
    parent_pid: int | None = None,
    backend_files: tuple[str, ...] = (),
) -> None:
    from attnbench.measure import refs as refs_mod
    from attnbench.measure import telemetry
    from attnbench.run.case import probe_case, run_case
    from attnbench.run.trace_case import is_trace, run_trace_case

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops between cases
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal too: the parent keeps the records
    die_with_parent(parent_pid)
    memory.timing_allocator()  # peak_cpu switches to its own state for its one call
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if mem_limit:
        # Imports a case may trigger lazily (the compile stack of flex) are made before the limit:
        # the budget is the case's, and an import that fails under it kills the worker outright.
        import importlib

        for name in ("torch._dynamo", "torch.nn.attention.flex_attention"):
            importlib.import_module(name)

        limit_memory(dev, mem_limit)
    nvml = telemetry.Nvml() if dev.type == "cuda" else telemetry.Nvml.__new__(telemetry.Nvml)
    if dev.type != "cuda":
        nvml.handle, nvml.reason = None, "no CUDA device (CPU run)"
    refs = None
    not_loaded = load_or_reason(backend_files)  # a spawned process starts with the built-in catalogue
    warm_memory_pass(dev, nvml)
    try:
        conn.send(("ready", os.getpid()))  # the parent starts a case's clock only after this
    except OSError:
        os._exit(0)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        kind, payload = msg
        if kind == "stop":
            return
        if kind == "refs":
            refs = refs_mod.measure(dev, tuple(payload))
            try:
                conn.send(("refs", refs))
            except OSError:
                os._exit(0)
            continue
        if kind == "refs-set":
            refs = payload
            continue
        case, policy, options = payload
        try:
            if not_loaded:
                raise RuntimeError(not_loaded)
            if kind == "probe":
                rec = probe_case(case, dev)
            elif is_trace(case):  # run --definition: the definition's inputs, backends and oracle
                rec = run_trace_case(case, dev, policy, nvml, **options)
            else:
                rec = run_case(case, dev, policy, refs, nvml, profile_dir, **options)
        except BaseException as e:  # every failure becomes a record with its reason
            rec = failure_fields(e)
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        try:
            conn.send(("record", rec))
        except OSError:  # the parent has gone: leave quietly
            os._exit(0)


def warm_memory_pass(dev: torch.device, nvml) -> None:
    """One throwaway profiled memory pass on a small matmul: the profiler's and allocator's
    one-time allocations (~0.6 MiB seen here) would otherwise land in the first case's peak."""
    from attnbench.run.case import measure_memory_and_kernel

    x = torch.ones(64, 64, device=dev)
    measure_memory_and_kernel(lambda: x @ x, dev, nvml)


class Worker:
    """A spawned process that runs cases; restarted after a timeout or a crash."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.proc = None
        self.conn = None
        self.refs: dict | None = None
        self.ready = False

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child, str(self.cfg.device), self.cfg.threads, self.cfg.mem_limit, self.cfg.profile_dir, os.getpid(),
                  self.cfg.backend_files),
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.conn = parent
        self.ready = False
        if self.refs is not None:
            self.conn.send(("refs-set", self.refs))

    def measure_refs(self, dtypes: tuple[str, ...]) -> dict:
        self._ensure()
        failed = self._await_ready()
        if failed:
            raise RuntimeError(failed["reason"])
        self.conn.send(("refs", list(dtypes)))
        kind, refs = self.conn.recv()
        self.refs = refs
        return refs

    def _ensure(self) -> None:
        if self.proc is None or not self.proc.is_alive():
            self.start()

    def _await_ready(self, limit: float = WORKER_START_S) -> dict | None:
        """Wait for the worker's "ready" (its imports and warm-up done); None once it is, else the
        fields of the failure (it died while starting, or did not start within `limit`)."""
        if self.ready:
            return None
        oom_before = oom_kill_count()
        if not self.conn.poll(limit):
            self.kill()
            return {"status": "error", "reason": f"the worker process did not start within {limit:.0f} s "
                    f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs); it was killed"}
        try:
            kind, _ = self.conn.recv()
        except (EOFError, ConnectionError):
            self.proc.join(5)
            return self._death_fields(oom_before)
        self.ready = kind == "ready"
        return None if self.ready else {"status": "error", "reason": f"the worker said {kind!r} before 'ready'"}

    def run(self, case: Case, timeout: float, kind: str = "case") -> dict:
        """kind "case" measures everything; "probe" only runs a call and its peak memory. `timeout`
        counts from the moment the case is handed to a started worker (never the worker's start)."""
        self._ensure()
        failed = self._await_ready()
        if failed:
            return failed
        oom_before = oom_kill_count()
        policy = replace(self.cfg.policy, max_time=min(self.cfg.policy.max_time, max(0.1, self.cfg.time_budget / 4)))
        options = {"inputs": self.cfg.inputs, "reference_limit": self.cfg.reference_limit}
        if kind == "case":
            options |= {"keep_throttled": self.cfg.keep_throttled, "cuda_graph": self.cfg.cuda_graph,
                        "energy_max_s": self.cfg.time_budget / 4}  # the energy loop: as long as the timing may
        self.conn.send((kind, (case, policy, options)))
        if not self.conn.poll(timeout):
            self.kill()
            return {
                "status": "timeout",
                "reason": f"no result within {timeout:.0f} s (time budget "
                f"{self.cfg.time_budget:g} s); the worker was killed and restarted",
            }
        try:
            return self.conn.recv()[1]
        except (EOFError, ConnectionError):
            self.proc.join(5)
            return self._death_fields(oom_before)

    def _death_fields(self, oom_kills_before: int | None) -> dict:
        code = self.proc.exitcode
        self.proc = None
        if code is not None and code < 0:
            sig = signal.Signals(-code).name
            if -code == signal.SIGKILL:
                after = oom_kill_count()
                if oom_kills_before is not None and after is not None and after > oom_kills_before:
                    return {
                        "status": "oom",
                        "reason": "the worker was killed by SIGKILL while the kernel's "
                        f"out-of-memory killer acted (oom_kill count {oom_kills_before} -> {after})",
                    }
                return {
                    "status": "killed",
                    "reason": "the worker was killed by SIGKILL from outside (the "
                    "kernel's out-of-memory kill count did not change)"
                    if after is not None
                    else "the worker was killed by SIGKILL (whether by the out-of-memory killer is unknown here)",
                }
            if -code in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
                return {"status": "killed", "reason": f"the worker was killed by {sig} from outside"}
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


def declared_backend(case: Case) -> registry.Backend | None:
    """The catalogue's backend of a case; None for one the catalogue does not hold (a definition's
    own `reference` under run --definition), which the cost model takes as materialising."""
    return next((b for b in registry.get(case.variant).backends if b.name == case.backend), None)


def materializes(case: Case) -> bool:
    """The case's backend holds B·H·Lq·Lk scores (the cost model's memory term)."""
    b = declared_backend(case)
    return b is None or b.materializes


def work_flops(case: Case):
    """The FLOPs the case's backend computes (Backend.work_flops: a padded batch's rectangle), else the variant's."""
    b = declared_backend(case)
    return (b is not None and b.work_flops) or registry.get(case.variant).flops


def workspace(case: Case) -> float:
    """The bytes the case's backend declares beyond its kind (Backend.workspace), 0 when none."""
    b = declared_backend(case)
    return float(b.workspace(case.problem)) if b is not None and b.workspace else 0.0


def call_peak_model(case: Case) -> float:
    """One call's predicted peak above its inputs: what `peak_mem_bytes` measures."""
    return predict_call_peak_bytes(case.problem, materializes(case), workspace(case))


def peak_model(case: Case) -> float:
    """What the case needs in all (inputs and one call): the skip rule's and `mem_model_bytes`."""
    return predict_peak_bytes(case.problem, materializes(case), workspace(case))


def skip_reason(case: Case, cfg: RunConfig, refs: dict | None) -> str | None:
    need = peak_model(case)
    free = memory.free_bytes(cfg.device)
    if need > 0.8 * free:
        return f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    secs = predict_call_seconds(case.problem, work_flops(case), materializes(case), refs)
    if secs is not None and CALLS_PER_CASE * secs > cfg.time_budget:
        return (
            f"needs ~{secs:.1f} s per call (predicted from the in-run GEMM rate); the time budget of "
            f"{cfg.time_budget:g} s allows fewer than the {CALLS_PER_CASE} calls a case takes (raise --time-budget)"
        )
    return None


# ---------------------------------------------------------------------------- the loop
@functools.lru_cache(maxsize=8)
def _device_name(device: torch.device) -> str | None:
    from attnbench.measure.env import capture

    return capture(device).get("device_name")


@functools.lru_cache(maxsize=64)
def backend_version(backend: str) -> str:
    """The version of the code that runs a backend: the peer package's for peer:NAME, triton's
    and torch's for the Triton kernels, torch's for the rest."""
    from importlib import metadata

    if backend.startswith("peer:"):
        try:
            return f"{backend[5:]} {metadata.version(backend[5:])}"
        except metadata.PackageNotFoundError:
            return f"{backend[5:]} not installed"
    if "triton" in backend:
        try:
            return f"triton {metadata.version('triton')}, torch {torch.__version__}"
        except metadata.PackageNotFoundError:
            return f"triton not installed, torch {torch.__version__}"
    return f"torch {torch.__version__}"


def case_identity(backend: str, device: torch.device, threads: int | None = None) -> dict:
    """What besides the problem changes a measurement: threads, device name, backend version."""
    return {
        "threads": threads or torch.get_num_threads(),
        "device_name": _device_name(device),
        "backend_version": backend_version(backend),
    }


def case_key(case: Case, device: torch.device, threads: int | None = None) -> str:
    identity = case_identity(case.backend, device, threads)
    source = source_fields(case.variant, case.backend).get("backend_source")
    if source:  # a user's kernel: its file's content is its version (a changed file is another case to --resume)
        identity["backend_version"] = f"{source['kind']} {source['where']} sha256 {source['sha256']}"
    return case_id(case.problem.as_dict(), case.variant, case.backend, device.type, identity)


def base_record(case: Case, device: torch.device, threads: int | None = None) -> dict:
    """Every field of a record, unmeasured; `threads` (the run's --threads, default torch's)
    goes into the case_id as the record's `threads` field does."""
    pd = case.problem.as_dict()
    return {
        "case_id": case_key(case, device, threads),
        "variant": case.variant,
        "backend": case.backend,
        "device": device.type,
        **pd,
        "status": None,
        "reason": None,
        "latency_ms": None,
        "samples_ms": None,
        "setup_ms": None,
        "first_call_ms": None,
        "peak_mem_bytes": None,
        "mem_source": None,
        "mem_model_bytes": peak_model(case) if case.status is None else None,
        "flops": None,
        "bytes": None,
        "kv_cache_bytes": None,
        "tflops": None,
        "gbps": None,
        "roofline_frac": None,
        "error": None,
        "kernel": None,
        "threads": torch.get_num_threads(),
        "telemetry": None,
        "wall_s": None,
        "flags": [],
        "inputs": None,
        "attn_entropy": None,
        "roof": None,
        "clocks": None,
        "energy": None,
        **ragged_fields(case.problem),  # seq_dist, seq_lengths, padding_frac: variants with a seq_dist (paged)
        **source_fields(case.variant, case.backend),  # a backend from a user's file or package: where it comes from
    }



def run_cases(
    cases: Iterable[Case], cfg: RunConfig, worker: Worker, on_record: Callable[[dict], None], refs: dict | None = None
) -> None:
    """Run every case, handing each finished record to on_record (which writes it)."""
    for case in cases:
        rec = base_record(case, cfg.device, cfg.threads)
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
        rec["inputs"] = rec.get("inputs") or cfg.inputs
        if cfg.threads:
            rec["threads"] = cfg.threads
        on_record(rec)
