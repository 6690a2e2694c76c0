"""Ring attention: exact attention with the sequence split across P ranks (Liu, Zaharia &
Abbeel 2023, "Ring Attention with Blockwise Transformers"; the zig-zag causal layout of
context parallelism in Megatron-LM / zigzag ring-flash-attention).

Each rank holds the queries, keys and values of its shard (see layout.py). In P steps the K/V
shards travel around the ring: at step t rank r holds the K/V of rank (r − t) mod P. Before
computing on the block it holds, a rank posts the transfer of that block to rank r+1 and the
receive of the next one from rank r−1 (one `dist.batch_isend_irecv` of K and V), so the
transfer overlaps the computation; it then waits. Partial results are merged with the
log-sum-exp (blocks.merge_into), so the result is exact, not approximate.

    per rank: time O(L²/P) (causal: O(L²/2P) with the zig-zag), memory O(L/P) — two K/V
    shards (the one computed on and the one arriving) plus the query shard and an fp32
    accumulator; each rank sends (P−1) K/V shards: 2·B·Hkv·(L/P)·D·itemsize bytes each.

Honest limits: forward only; self-attention only (Lq == Lk); the compute/communication split is
measured with wall clocks around the local computation and the wait (on a GPU each step
synchronises the device to read them, which removes some overlap between steps). With gloo on a
CPU the "overlap" shares the same cores as the computation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from attnbench.distributed.blocks import BLOCKS, BlockFn, default_scale, merge_into
from attnbench.distributed.layout import Call, Layout, plan


@dataclass
class RankStats:
    """What one rank did in one ring call (seconds, bytes, pairs per (batch, head))."""

    compute_s: float = 0.0
    comm_wait_s: float = 0.0  # waiting for transfers not hidden behind the computation (all-to-alls included)
    a2a_s: float = 0.0  # of which the Ulysses all-to-alls (blocking: never hidden)
    post_s: float = 0.0  # posting the sends/receives
    bytes_sent: int = 0
    a2a_bytes: int = 0  # of which sent by the all-to-alls
    pairs: int = 0  # (query, key) pairs attended, counted from the calls made
    calls: int = 0


def compute_on(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, calls: list[Call], block: BlockFn,
               out_acc: torch.Tensor, lse_acc: torch.Tensor, scale: float, stats: RankStats) -> None:
    """Run the planned block calls of one step and fold each into the accumulators."""
    for c in calls:
        (qa, qb), (ka, kb) = c.q_slice, c.k_slice
        out, lse = block(q[..., qa:qb, :], k[..., ka:kb, :], v[..., ka:kb, :], c.kind == "causal", scale)
        merge_into(out_acc, lse_acc, out, lse, (qa, qb))
        stats.pairs += c.pairs
        stats.calls += 1


def _accumulators(q: torch.Tensor):
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)  # (B, Hq, L_r, D)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)  # (B, Hq, L_r)
    return out, lse


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout, rank: int,
                   block: str | BlockFn = "sdpa", stats: RankStats | None = None, group=None,
                   sync: Callable[[], None] = lambda: None, ranks: tuple[int, ...] | None = None) -> torch.Tensor:
    """This rank's output shard (B, Hq, L_r, D) of exact attention over the whole sequence.

    q (B, Hq, L_r, D), k/v (B, Hkv, L_r, D): this rank's shard in the layout's local order.
    Every rank of `group` must call it with the same layout; `rank` is the position in the
    ring and `ranks` the global rank at each position (None: the position is the rank). `sync`
    waits for the device (torch.cuda.synchronize on a GPU) so the compute time is read correctly."""
    block_fn = BLOCKS[block] if isinstance(block, str) else block
    stats = stats if stats is not None else RankStats()
    world = layout.world
    scale = default_scale(q.shape[-1])
    out_acc, lse_acc = _accumulators(q)
    peer = (lambda i: ranks[i]) if ranks else (lambda i: i)
    kv = (k.contiguous(), v.contiguous())  # the K/V shard held now: (B, Hkv, L_src, D) each
    nxt, reqs = kv, []
    for step in range(world):
        src = (rank - step) % world  # whose K/V this rank holds now
        if step < world - 1:
            t0 = time.perf_counter()
            shape = (*k.shape[:2], layout.length((src - 1) % world), k.shape[-1])
            nxt = (k.new_empty(shape), v.new_empty(shape))
            ops = [dist.P2POp(dist.isend, t, peer((rank + 1) % world), group) for t in kv] + \
                  [dist.P2POp(dist.irecv, t, peer((rank - 1) % world), group) for t in nxt]
            reqs = dist.batch_isend_irecv(ops)
            stats.post_s += time.perf_counter() - t0
            stats.bytes_sent += sum(t.numel() * t.element_size() for t in kv)
        t0 = time.perf_counter()
        compute_on(q, kv[0], kv[1], plan(layout, rank, src), block_fn, out_acc, lse_acc, scale, stats)
        sync()
        stats.compute_s += time.perf_counter() - t0
        if step < world - 1:
            t0 = time.perf_counter()
            for r in reqs:
                r.wait()
            sync()
            stats.comm_wait_s += time.perf_counter() - t0
            kv = nxt
    return out_acc.to(q.dtype)


def simulate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: Layout,
             block: str | BlockFn = "eager") -> tuple[torch.Tensor, list[RankStats]]:
    """Every rank's share of the ring computed one after another in this process (no
    communication): checks the layout, the plan and the merge without torch.distributed.

    q, k, v: full (B, H, L, D) tensors; returns the full output and per-rank stats."""
    block_fn = BLOCKS[block] if isinstance(block, str) else block
    scale = default_scale(q.shape[-1])
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    all_stats = []
    for rank in range(layout.world):
        pos = layout.positions(rank).to(q.device)
        out_acc, lse_acc = _accumulators(q[..., pos, :])
        stats = RankStats()
        for step in range(layout.world):
            src = (rank - step) % layout.world
            k_pos = layout.positions(src).to(q.device)
            compute_on(q[..., pos, :], k[..., k_pos, :], v[..., k_pos, :], plan(layout, rank, src), block_fn,
                       out_acc, lse_acc, scale, stats)
        out[..., pos, :] = out_acc.to(q.dtype)
        all_stats.append(stats)
    return out, all_stats
