"""Launch a measured context-parallel case (ring, Ulysses, hybrid) on P ranks and turn it into
the fields of a results record.

`run_cp_case` (`run_ring_case`: the ring alone) spawns the ranks with multiprocessing
("spawn"; gloo over tcp://127.0.0.1 on a free port, or nccl with one GPU per rank) — or, when
already under torchrun (RANK and WORLD_SIZE set), runs this process's rank with init_method
env://. A rank that crashes, runs out of memory or exceeds the time limit becomes a record with
its reason, like the runner's worker.
It measures one rank too (world_size 1, same threads per rank) so the record carries the strong
scaling efficiency T1 / (P·T_P).

Limits: ranks cannot be spawned from a daemonic process (the runner's worker is one), so call
this from the parent process; under torchrun no one-rank baseline is measured.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import tempfile
import time
from dataclasses import replace

import torch

from attnbench.core.cp import Degrees, degrees
from attnbench.core.problem import Problem
from attnbench.distributed.rank import RankSpec, run_rank
from attnbench.measure import flops as fl
from attnbench.measure.failure import failure_fields
from attnbench.measure.timing import Stats, TimingPolicy
from attnbench.variants.shared import attention_flops, io_bytes, kv_cache_bytes

DEFAULT_POLICY = TimingPolicy(min_samples=5, min_time=0.2, max_time=2.0, target_rel_iqr=0.1)
START_GRACE_S = 30.0  # imports and process-group setup on top of the budget


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; a tiny race remains until bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def default_threads(world: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // world)


def _rank_device(comm: str, local_rank: int) -> torch.device:
    if comm == "nccl":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _rank_entry(rank: int, spec: RankSpec, err_dir: str) -> None:
    """Body of a spawned rank: failures are written as a record's status/reason, then exit 1."""
    import torch.distributed as dist


    try:
        device = _rank_device(spec.comm, rank)
        dist.init_process_group(spec.comm, init_method=spec.init_method, rank=rank, world_size=spec.world)
        result = run_rank(rank, spec, device)
        if result is not None:
            with open(spec.result_path, "w", encoding="utf-8") as f:
                json.dump(result, f)
        dist.destroy_process_group()
    except BaseException as e:  # the parent turns this into the record's status and reason
        with open(os.path.join(err_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
            json.dump(failure_fields(e), f)
        os._exit(1)  # do not wait for peers stuck in a collective


def spawn_ranks(spec: RankSpec, timeout: float) -> dict:
    """Run the ranks as spawned processes; rank 0's result, or {"status", "reason"}."""
    if mp.current_process().daemon:
        return {"status": "error", "reason": "ranks cannot be spawned from a daemonic process (the "
                "runner's worker); call attnbench.distributed.launch.run_cp_case from the parent"}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="attnbench-ring-") as tmp:
        spec = replace(spec, init_method=f"tcp://127.0.0.1:{free_port()}", result_path=os.path.join(tmp, "result.json"))
        procs = [ctx.Process(target=_rank_entry, args=(r, spec, tmp)) for r in range(spec.world)]
        for p in procs:
            p.start()
        failure = _wait(procs, timeout, tmp)
        if failure:
            return failure
        with open(spec.result_path, encoding="utf-8") as f:
            return json.load(f)


def _wait(procs, timeout: float, tmp: str) -> dict | None:
    """Join the ranks; on the first failure or the deadline kill the rest. None when all ok."""
    deadline = time.monotonic() + timeout
    failure = None
    while failure is None:
        codes = [p.exitcode for p in procs]
        if all(c == 0 for c in codes):
            break
        bad = next((r for r, c in enumerate(codes) if c not in (None, 0)), None)
        if bad is not None:
            failure = _rank_failure(bad, codes[bad], tmp)
        elif time.monotonic() > deadline:
            failure = {"status": "timeout", "reason": f"the ranks did not finish within {timeout:.0f} s; "
                       "its ranks were killed"}
        else:
            time.sleep(0.05)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(5)
    return failure


def _rank_failure(rank: int, code: int, tmp: str) -> dict:
    path = os.path.join(tmp, f"rank{rank}.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
        return {"status": fields["status"], "reason": f"rank {rank}: {fields['reason']}"}
    if code < 0 and -code == signal.SIGKILL:
        return {"status": "oom", "reason": f"rank {rank} was killed by SIGKILL, most likely by the "
                "kernel's out-of-memory killer"}
    if code < 0:
        return {"status": "error", "reason": f"rank {rank} crashed with {signal.Signals(-code).name}"}
    return {"status": "error", "reason": f"rank {rank} exited with code {code}"}


def run_torchrun_rank(spec: RankSpec) -> dict | None:
    """This process's rank under torchrun (env:// init); rank 0 returns the result."""
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    device = _rank_device(spec.comm, local)
    if not dist.is_initialized():
        dist.init_process_group(spec.comm, init_method="env://")
    return run_rank(rank, spec, device)


def run_ring_case(problem: Problem, world_size: int, **kw) -> dict | None:
    """Measure ring attention for `problem` on `world_size` ranks; the record fields."""
    return run_cp_case(problem, world_size, strategy="ring", **kw)


def run_cp_case(problem: Problem, world_size: int, *, strategy: str = "ring", ulysses: int | None = None,
                variant: str | None = None, comm: str | None = None, device: str = "cpu",
                block: str = "sdpa", layout: str = "zigzag", policy: TimingPolicy = DEFAULT_POLICY,
                threads: int | None = None, baseline: bool = True, check_error: bool = True,
                timeout: float = 600.0) -> dict | None:
    """Measure `strategy` (ring | ulysses | hybrid with its Ulysses degree) for `problem` on
    `world_size` ranks; the record fields.

    comm: "gloo" (CPU) or "nccl" (one GPU per rank); default by device. Returns None on the
    non-zero ranks under torchrun."""
    comm = comm or ("nccl" if device == "cuda" else "gloo")
    threads = threads or (default_threads(world_size) if comm == "gloo" else None)
    spec = RankSpec(problem=problem.as_dict(), world=world_size, strategy=strategy, ulysses=ulysses,
                    variant=variant or strategy, comm=comm, block=block, layout=layout,
                    policy=policy, threads=threads, check_error=check_error)
    if under_torchrun():
        if int(os.environ["WORLD_SIZE"]) != world_size:
            raise ValueError(f"world_size={world_size} but torchrun started {os.environ['WORLD_SIZE']} ranks")
        res = run_torchrun_rank(spec)
        return None if res is None else record_fields(problem, spec, res, None, "torchrun")
    base = None
    if baseline and world_size > 1:
        one = replace(spec, world=1, strategy="ring", ulysses=None, check_error=False)
        base = spawn_ranks(one, timeout + START_GRACE_S)
    res = spawn_ranks(spec, timeout + START_GRACE_S)
    if "status" in res:
        return res
    return record_fields(problem, spec, res, base, "spawn")


def record_fields(p: Problem, spec: RankSpec, res: dict, base: dict | None, how: str) -> dict:
    """Rank 0's result (and the one-rank baseline) as the fields of a results record."""
    stats = Stats.of(res["samples_ms"])
    ranks = sorted(res["ranks"], key=lambda r: r["rank"])
    med = lambda r, key: statistics.median(it[key] for it in r["per_iter"])  # noqa: E731
    total, compute, comm = ([med(r, k) for r in ranks] for k in ("total_ms", "compute_ms", "comm_ms"))
    flops, nbytes = attention_flops(p), io_bytes(p)
    # QKᵀ and PV: 2·D FLOPs each per pair and head; a rank computes its heads (Hq/U under Ulysses)
    rank_flops = [4.0 * p.batch * r["heads"] * p.head_dim * r["per_iter"][-1]["pairs"] for r in ranks]
    last = lambda key: [r["per_iter"][-1].get(key) for r in ranks]  # noqa: E731
    base_ms = None
    if base is not None and "status" not in base:
        base_ms = statistics.median(base["samples_ms"])
    peaks = [r["peak_bytes"] for r in ranks]
    deg = Degrees(1, spec.world) if spec.strategy == "torch_cp" else degrees(spec.strategy, spec.world, spec.ulysses)
    dist_fields = {
        "strategy": spec.strategy, "ulysses_degree": deg.ulysses, "ring_degree": deg.ring,
        "world_size": spec.world, "comm_backend": spec.comm, "block": spec.block, "layout": spec.layout,
        "threads_per_rank": spec.threads, "launch": how,
        "per_rank": {"seq": [r["length"] for r in ranks], "heads": [r["heads"] for r in ranks],
                     "latency_ms": total, "compute_ms": compute,
                     "comm_ms": comm, "a2a_ms": [med(r, "a2a_ms") for r in ranks],
                     "post_ms": [med(r, "post_ms") for r in ranks],
                     "bytes_sent": last("bytes_sent"), "a2a_bytes": last("a2a_bytes"),
                     "bytes_model": [r["bytes_model"] for r in ranks], "peak_mem_bytes": peaks,
                     "pairs": last("pairs"), "pairs_model": [r["pairs_model"] for r in ranks], "flops": rank_flops},
        "compute_share": sum(compute) / sum(total) if sum(total) > 0 else None,
        "comm_share": sum(comm) / sum(total) if sum(total) > 0 else None,
        "bytes_sent": sum(last("bytes_sent")),
        "bytes_match_model": last("bytes_sent") == [r["bytes_model"] for r in ranks],
        "load_imbalance": max(rank_flops) / (sum(rank_flops) / len(rank_flops)) - 1.0 if sum(rank_flops) else None,
        "baseline_ms": base_ms,
        "baseline_reason": None if base_ms is not None else (base or {}).get("reason", f"not measured ({how})"),
        "speedup": base_ms / stats.median if base_ms else None,
        "scaling_efficiency": base_ms / (spec.world * stats.median) if base_ms else None,
    }
    if spec.strategy == "torch_cp":
        _no_split(dist_fields)
    known = [b for b in peaks if b is not None]
    return {
        "status": "ok", "reason": None, "latency_ms": stats.__dict__, "samples_ms": res["samples_ms"],
        "setup_ms": res["setup_ms"], "first_call_ms": res["first_call_ms"],
        "peak_mem_bytes": max(known) if known else None,
        "mem_source": f"{ranks[0]['mem_source']} (max over {spec.world} ranks)",
        "flops": flops, "bytes": nbytes, "kv_cache_bytes": kv_cache_bytes(p),
        "tflops": fl.rate(flops, stats.median, 1e12), "gbps": fl.rate(nbytes, stats.median, 1e9),
        "roofline_frac": None, "error": res["error"],
        "kernel": f"{_strategy_text(spec.strategy, deg)}/{spec.comm}, {spec.block} blocks", "threads": spec.threads,
        "telemetry": {"available": False, "reason": "not collected for multi-rank cases"},
        "timing": {"calls_per_sample": 1, "stopped_by": "max over ranks per iteration"},
        "distributed": dist_fields,
    }


def _no_split(d: dict) -> None:
    """torch's context parallel: its communication is inside SDPA; nothing to split or count."""
    from attnbench.distributed.torch_cp import NO_SPLIT

    for key in ("compute_ms", "comm_ms", "a2a_ms", "post_ms", "bytes_sent", "a2a_bytes", "pairs", "flops"):
        d["per_rank"][key] = None
    d.update(compute_share=None, comm_share=None, bytes_sent=None, bytes_match_model=None, load_imbalance=None,
             split_reason=NO_SPLIT)


def _strategy_text(strategy: str, d: Degrees) -> str:
    if strategy == "torch_cp":
        return f"torch context_parallel ×{d.world}"
    if d.ulysses == 1:
        return f"ring ×{d.ring}"
    return f"ulysses ×{d.ulysses}" if d.ring == 1 else f"hybrid ulysses {d.ulysses} × ring {d.ring}"


def run_distributed_case(case, cfg, timeout: float | None = None) -> dict:
    """The runner's hook: a ring / ulysses / hybrid case (problem param world_size >= 2) under a
    RunConfig."""
    p = case.problem
    policy = replace(cfg.policy, max_time=min(cfg.policy.max_time, max(0.1, cfg.time_budget / 8)))
    return run_cp_case(p, p.param("world_size"), strategy=case.variant, ulysses=p.param("ulysses"),
                       variant=case.variant, device=cfg.device.type, block=case.backend,
                       layout=p.param("layout", "zigzag"), policy=policy, threads=cfg.threads,
                       timeout=timeout or cfg.time_budget)
