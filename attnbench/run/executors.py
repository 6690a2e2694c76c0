"""Where the cases of a sweep run: spread over a Ray cluster, or split into shards (one per
Slurm array task) whose results files are merged afterwards.

Ray (`run_cases_ray`): each runnable case is one Ray task (num_gpus=1 on a GPU run, num_cpus =
--threads or 1 on the CPU) that runs the case exactly as a local run does — in an isolated
worker process started by the Ray worker (attnbench.run.worker.Worker/run_cases, kept for that Ray
worker's later tasks), so an OOM or a crash of the case is a record, as locally. If the Ray worker process
running the task itself dies, Ray
retries the task once (max_retries=1); a second death becomes an `error` record with the reason.
Cases whose status is already decided (unsupported, unavailable) never leave this process. The
caller writes the records (the same JSONL as a local run).

Honest limits: every node needs the same attnbench installed; cases running side by side on a
node share its CPU cores and memory bandwidth (give CPU cases --threads and expect noise, or
one case per node); the header's in-run references (GEMM, copy) come from the caller's machine.

Shards (`shard`): the case list sorted by a stable hash of each case, dealt round robin, so
shard K of N is the same on every machine and the N shards partition the list.
Merge (`merge`): results files concatenated under one header; environments must match unless
allowed; a case_id seen twice in one environment is kept once (the first) and counted; the same
case measured in two environments (--allow-env-mismatch) is kept twice. Each merged record's
`source` names the file it came from.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import signal
from typing import Callable, Iterable

from attnbench.core.errors import UsageError
from attnbench.run.plan import Case
from attnbench.run.worker import RunConfig, Worker, run_cases
from attnbench.variants.user import load_or_reason

RAY_MISSING = "unavailable: ray is not installed; install it with pip install 'attnbench[cluster]'"
RAY_FIX = (
    "check the address (`ray status` on the head prints it; host:6379, or ray://host:10001 for a "
    "client); a cluster started by a recent `ray start` uses token authentication: start it with "
    "RAY_AUTH_MODE=disabled, or run here with the cluster's RAY_AUTH_MODE and token (see docs/distributed.md)"
)


def connect_ray(address: str | None, local_cpus: int | None = None) -> bool:
    """Connect to (or, with no address, start) Ray before anything is written; True when this
    call initialised it (the caller shuts it down). A failure is one UsageError line with the fix."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
    kwargs = {"address": address} if address else {"num_cpus": local_cpus, "include_dashboard": False}
    try:
        ray.init(log_to_driver=False, **kwargs)
    except Exception as e:  # ConnectionError, RuntimeError, Ray's auth errors: all one line
        why = " ".join(str(e).split())[:200]
        where = f"the Ray cluster at '{address}'" if address else "a local Ray instance"
        raise UsageError(f"cannot connect to {where} ({type(e).__name__}: {why}); {RAY_FIX}") from None
    return True


# ---------------------------------------------------------------------------- Ray
@functools.lru_cache(maxsize=4)
def _task_worker(cfg: RunConfig) -> Worker:
    """The isolated worker of this Ray worker process, reused by its later tasks as a local run
    reuses its worker (restarted after a crash or a timeout); closed when the process exits."""
    worker = Worker(cfg)
    atexit.register(worker.close)
    return worker


def _case_in_task(case: Case, cfg: RunConfig, refs: dict | None) -> dict:
    """Body of one Ray task: the case in an isolated worker, exactly as in a local run, with the
    header's in-run references (so its record has roofline_frac as a local one does)."""
    _test_hook(case)
    if (why := load_or_reason(cfg.backend_files)) is not None:  # this Ray process starts with ours only
        raise RuntimeError(why)
    out: list[dict] = []
    worker = _task_worker(cfg)
    if refs is not None and worker.refs != refs:
        worker.refs = refs  # sent to the worker when it (re)starts
        if worker.proc is not None and worker.proc.is_alive():
            worker.conn.send(("refs-set", refs))
    run_cases([case], cfg, worker, out.append, refs)
    out[0]["executor"] = {"kind": "ray", "node": os.uname().nodename}
    return out[0]


def _test_hook(case: Case) -> None:
    """Tests only (ATTNBENCH_TEST_BACKENDS=1): param fault="kill-ray-worker" kills the Ray worker
    process running the task (not the case's own worker), after noting the attempt in the file
    named by param attempts_file."""
    if os.environ.get("ATTNBENCH_TEST_BACKENDS") != "1" or case.problem.param("fault") != "kill-ray-worker":
        return
    with open(case.problem.param("attempts_file"), "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


@functools.lru_cache(maxsize=1)
def _remote_task():
    import ray

    return ray.remote(max_retries=1, retry_exceptions=False)(_case_in_task)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A host:port address (or ray://host:port) must accept a TCP connection within `timeout`
    seconds: Ray itself retries an absent head for minutes before it fails."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"cannot connect to the Ray cluster at '{address}' ({e.strerror or e}); {RAY_FIX}") from None


def run_cases_ray(
    cases: Iterable[Case],
    cfg: RunConfig,
    address: str | None = None,
    on_record: Callable[[dict], None] = lambda r: None,
    refs: dict | None = None,
    local_cpus: int | None = None,
) -> list[dict]:
    """Run the cases on a Ray cluster; records in the order of `cases`, each handed to on_record
    as it finishes. address: a cluster ("auto", "ray://host:10001"); None starts a local one
    (local_cpus CPUs) unless Ray is already initialised in this process."""
    ray = _import_ray()
    cases = list(cases)
    if not cases:
        return []
    started = connect_ray(address, local_cpus)
    try:
        return _run_on_ray(ray, cases, cfg, on_record, refs)
    finally:
        if started:
            ray.shutdown()


def _run_on_ray(ray, cases: list[Case], cfg: RunConfig, on_record, refs) -> list[dict]:
    records: list[dict | None] = [None] * len(cases)
    decided = [i for i, c in enumerate(cases) if c.status is not None]
    for i in decided:  # unsupported / unavailable: recorded here, never sent
        run_cases([cases[i]], cfg, Worker(cfg), lambda r, i=i: records.__setitem__(i, r), refs)
        on_record(records[i])
    gpu = cfg.device.type == "cuda"
    opts = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": cfg.threads or 1}
    task = _remote_task().options(**opts)
    pending = {task.remote(c, cfg, refs): i for i, c in enumerate(cases) if c.status is None}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        records[i] = _result_or_error(ray, done[0], cases[i], cfg)
        on_record(records[i])
    return records  # type: ignore[return-value]


def _result_or_error(ray, ref, case: Case, cfg: RunConfig) -> dict:
    from attnbench.run.worker import base_record

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:  # the task's process died twice, or Ray lost the node
        rec = base_record(case, cfg.device, cfg.threads)
        why = " ".join(str(e).split())[:300]
        rec.update(
            status="error",
            reason=f"the Ray task died and its one retry too ({type(e).__name__}): {why}",
            executor={"kind": "ray", "node": None},
        )
        return rec


# ---------------------------------------------------------------------------- shards
def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' with 0 <= K < N (Slurm: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
    with --array=0-(N-1))."""
    k_s, sep, n_s = text.partition("/")
    if not sep or not k_s.strip().isdigit() or not n_s.strip().isdigit():
        raise UsageError(f"bad --shard '{text}'; accepted: K/N with 0 <= K < N, e.g. 0/4")
    k, n = int(k_s), int(n_s)
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"bad --shard '{text}'; K must be in 0..N-1 and N >= 1, e.g. 3/4")
    return k, n


def _shard_key(case: Case) -> str:
    key = json.dumps({"p": case.problem.as_dict(), "v": case.variant, "b": case.backend}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()


def shard(cases: Iterable[Case], k: int, n: int) -> list[Case]:
    """Shard k of n: cases sorted by a stable hash, every n-th from the k-th, in their original
    order. The n shards partition the list (sizes differ by at most one)."""
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"shard {k}/{n}: K must be in 0..N-1 and N >= 1")
    cases = list(cases)
    ranked = sorted(range(len(cases)), key=lambda i: (_shard_key(cases[i]), i))
    mine = set(ranked[k::n])
    return [c for i, c in enumerate(cases) if i in mine]
