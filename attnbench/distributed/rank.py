"""What one rank does in a measured context-parallel case (ring, Ulysses or hybrid: hybrid.py):
build its shard, time the call, measure its peak memory, check the output, and hand its
statistics to rank 0.

Timing protocol (every rank runs the same loop and takes the same decisions): before each
iteration the ranks meet (an all-reduce that doubles as a barrier); each rank times its own
ring call; the iteration's latency is the maximum over ranks (all-reduce MAX), so the samples
are identical on every rank and the stop rule of attnbench.measure.timing (at least
min_samples and min_time, then IQR/median < target or max_time) stops them all together.
Compute time, communication wait and bytes are kept per rank and per iteration.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from attnbench.core.cp import degrees
from attnbench.core.problem import Problem
from attnbench.distributed.hybrid import Placement, bytes_model, cp_attention, make_groups, make_placement
from attnbench.distributed.layout import rank_pairs
from attnbench.distributed.ring import RankStats
from attnbench.measure import accuracy, memory
from attnbench.measure.timing import TimingPolicy, stop_reason


@dataclass(frozen=True)
class RankSpec:
    """Everything a rank needs, picklable (it crosses the spawn boundary)."""

    problem: dict
    world: int
    strategy: str = "ring"  # ring | ulysses | hybrid (core/cp.py)
    ulysses: int | None = None  # hybrid's Ulysses degree
    variant: str = "ring"  # whose inputs and reference (the registered variant)
    comm: str = "gloo"  # "gloo" (CPU tensors) | "nccl" (one GPU per rank)
    block: str = "sdpa"
    layout: str = "zigzag"
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    threads: int | None = None
    check_error: bool = True
    init_method: str = "env://"
    result_path: str | None = None  # rank 0 writes its result (JSON) here when spawned


class _Group:
    """Collectives on the device the communication backend wants (CPU for gloo)."""

    def __init__(self, comm: str, device: torch.device):
        self.device = device if comm == "nccl" else torch.device("cpu")

    def max(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def gather(self, obj: Any, rank: int) -> list[Any] | None:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return [obj]
        out = [None] * dist.get_world_size() if rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out


def shard_inputs(p: Problem, placement: Placement, rank: int, device: torch.device, variant: str = "ring"):
    """This rank's q, k, v shard, cut from the same seeded inputs the single-process runner uses
    (attnbench.measure.inputs.make_inputs), so errors and latencies compare case for case."""
    from attnbench.measure.inputs import make_inputs
    from attnbench.variants import registry

    q, k, v = make_inputs(registry.get(variant), p, torch.device("cpu"))
    idx = placement.positions(rank)
    return tuple(t.index_select(2, idx).contiguous().to(device) for t in (q, k, v))


def run_rank(rank: int, spec: RankSpec, device: torch.device) -> dict | None:
    """Measure the strategy on this rank; rank 0 returns the assembled result, others None."""
    if spec.threads and device.type == "cpu":
        torch.set_num_threads(spec.threads)
    with ExitStack() as stack:
        return _run(rank, spec, device, stack)


def _setup(rank: int, spec: RankSpec, p: Problem, device: torch.device, stack: ExitStack):
    """This rank's timed call and placement: ours (ring / ulysses / hybrid) or torch's."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if spec.strategy == "torch_cp":
        from attnbench.distributed.torch_cp import torch_cp_call
        from attnbench.measure.inputs import make_inputs
        from attnbench.variants import registry

        full = [t.to(device) for t in make_inputs(registry.get(spec.variant), p, torch.device("cpu"))]
        fn, placement = torch_cp_call(*full, p.causal, spec.world, device, stack)
        return (lambda stats=None: fn()), placement, sync
    deg = degrees(spec.strategy, spec.world, spec.ulysses)
    placement = make_placement(p.seq_q, p.causal, deg, spec.layout)
    groups = make_groups(deg, rank)
    q, k, v = shard_inputs(p, placement, rank, device, spec.variant)

    def call(stats: RankStats | None = None):
        return cp_attention(q, k, v, placement, rank, groups, spec.block, stats, sync=sync)

    return call, placement, sync


def _run(rank: int, spec: RankSpec, device: torch.device, stack: ExitStack) -> dict | None:
    p = Problem.from_dict(spec.problem)
    g = _Group(spec.comm, device)
    t0 = time.perf_counter()
    call, placement, sync = _setup(rank, spec, p, device, stack)
    setup_ms = (time.perf_counter() - t0) * 1e3
    deg = placement.degrees

    g.max([0.0])
    t0 = time.perf_counter()
    out = call()
    sync()
    first_ms = g.max([(time.perf_counter() - t0) * 1e3])[0]
    _warm_up(call, sync, g, spec.policy)
    samples, per_iter = _sample(call, sync, g, spec.policy)
    g.max([0.0])
    peak = memory.peak_cuda(call) if device.type == "cuda" else memory.peak_cpu(call)
    mine = {"rank": rank, "length": placement.length(rank), "per_iter": per_iter,
            "peak_bytes": peak.bytes, "mem_source": peak.source, "heads": p.heads // deg.ulysses,
            "pairs_model": None if spec.strategy == "torch_cp" else
            rank_pairs(placement.ring_layout, placement.ring_pos(rank)), "setup_ms": setup_ms,
            "bytes_model": None if spec.strategy == "torch_cp" else
            bytes_model(p.batch, p.heads, p.kv_heads, p.head_dim, p.itemsize, placement, rank)}
    error = _check(p, placement, out, rank, g, spec.variant) if spec.check_error else {"reason": "not checked"}
    everyone = g.gather(mine, rank)
    if rank != 0:
        return None
    return {"samples_ms": samples, "first_call_ms": first_ms, "ranks": everyone, "error": error,
            "setup_ms": max(r["setup_ms"] for r in everyone)}


def _warm_up(call, sync, g: _Group, policy: TimingPolicy) -> None:
    start = time.perf_counter()
    while True:
        call()
        sync()
        if g.max([time.perf_counter() - start])[0] >= policy.warmup_time:
            return


def _sample(call, sync, g: _Group, policy: TimingPolicy) -> tuple[list[float], list[dict]]:
    samples: list[float] = []
    per_iter: list[dict] = []
    spent = 0.0
    while True:
        g.max([0.0])  # line the ranks up
        st = RankStats()
        t0 = time.perf_counter()
        call(st)
        sync()
        mine = time.perf_counter() - t0
        slowest = g.max([mine])[0]
        samples.append(slowest * 1e3)
        per_iter.append({"total_ms": mine * 1e3, "compute_ms": st.compute_s * 1e3, "comm_ms": st.comm_wait_s * 1e3,
                         "a2a_ms": st.a2a_s * 1e3, "a2a_bytes": st.a2a_bytes,
                         "post_ms": st.post_s * 1e3, "bytes_sent": st.bytes_sent, "pairs": st.pairs,
                         "calls": st.calls})
        spent += slowest
        if stop_reason(samples, spent, policy):
            return samples, per_iter


# B·Hq·L² scores checked in fp64 (8k tokens × 8 heads: ~4 s on 2 idle cores); the check runs inside
# the ranks' time limit, so longer cases compare with single-process fp32 SDPA instead
FP64_CHECK_LIMIT = 2**29
CHUNK_SCORES = 2**24  # fp64 scores held at once by the chunked check (128 MiB)


def fp64_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Exact softmax attention in float64, query rows in chunks so that at most CHUNK_SCORES scores
    are held at once: the oracle of the distributed strategies (all compute exact attention) at
    lengths where the materialised reference would not fit. GQA: K/V heads repeated."""
    b, hq, lq, d = q.shape
    groups = hq // k.shape[1]
    k, v = (x.double().repeat_interleave(groups, dim=1) if groups > 1 else x.double() for x in (k, v))
    lk, scale = k.shape[-2], d ** -0.5
    rows = max(1, CHUNK_SCORES // (b * hq * lk))
    out = torch.empty((b, hq, lq, d), dtype=torch.float64)
    for a in range(0, lq, rows):
        z = min(lq, a + rows)
        s = q[..., a:z, :].double() @ k.transpose(-2, -1) * scale
        if causal:  # bottom-right aligned: query i sees keys j <= i + (lk - lq)
            i = torch.arange(a, z)[:, None] + (lk - lq)
            s = s.masked_fill(torch.arange(lk)[None, :] > i, float("-inf"))
        out[..., a:z, :] = torch.softmax(s, dim=-1) @ v
    return out


def _check(p: Problem, placement: Placement, out: torch.Tensor, rank: int, g: _Group,
           variant_name: str = "ring") -> dict | None:
    """Error of the assembled output (rank 0) against exact attention in float64 on the same
    inputs (`fp64_attention`, chunked over query rows) up to FP64_CHECK_LIMIT scores; above it,
    against single-process fp32 SDPA (torch's fused kernel: no L×L scores held), so long runs still
    say whether they equal one process (that comparison includes SDPA's own float32 error)."""
    import torch.nn.functional as F

    from attnbench.measure.inputs import make_inputs
    from attnbench.variants import registry

    elems = p.batch * p.heads * p.seq_q * p.seq_k
    shards = g.gather(out.detach().cpu(), rank)
    if rank != 0:
        return None
    full = torch.empty((p.batch, p.heads, p.seq_q, p.head_dim), dtype=out.dtype)
    for r, shard in enumerate(shards):
        full[:, :, placement.positions(r)] = shard
    variant = registry.get(variant_name)
    q, k, v = (t.float() for t in make_inputs(variant, p, torch.device("cpu")))
    if elems > FP64_CHECK_LIMIT:
        one = F.scaled_dot_product_attention(q, k, v, is_causal=p.causal, enable_gqa=p.heads != p.kv_heads)
        return {"vs": f"single-process SDPA fp32 (fp64 check too long: {elems:.2e} scores > "
                f"{FP64_CHECK_LIMIT:.0e})", **accuracy.errors(full, one)}
    return {"vs": "fp64 exact attention", **accuracy.errors(full, fp64_attention(q, k, v, p.causal))}
