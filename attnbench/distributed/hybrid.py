"""Ulysses and hybrid (Ulysses × ring) context parallelism on one rank; ring alone is the case
ulysses = 1, Ulysses alone the case ring = 1 (the rules and byte formulas: core/cp.py).

Placement. The ring layout (layout.py: zig-zag when causal) splits the sequence over the R
ring positions; ring position i's shard is cut into U contiguous pieces (in its local order)
held by ranks U·i … U·i + U−1, its Ulysses group. Ulysses alone: R = 1, the shard is the whole
sequence, cut into U contiguous pieces.

One call on a rank:
  1. K/V heads replicated U/Hkv times when Hkv < U (core/cp.py), so each rank gets its K/V head;
  2. three all-to-alls in the Ulysses group (q, k, v): (B, H, n, D) sequence pieces become
     (B, H/U, U·n, D) head shards over the ring shard, pieces in group order = the shard's order;
  3. ring attention over the R ring positions (ring.py) for those heads — with R = 1 this is
     the local attention over the whole sequence, one block call, no communication;
  4. one all-to-all back: (B, Hq/U, U·n, D) → (B, Hq, n, D).

The all-to-alls are blocking (`dist.all_to_all_single`), so their time is communication the
computation does not hide; it is recorded in RankStats.a2a_s (and in comm_wait_s), their bytes
in a2a_bytes (and bytes_sent). Packing the buffers (a contiguous copy) is counted in post_s.

Honest limits: forward only, self-attention, even split (core/cp.split_reason); Ulysses groups
are consecutive ranks, so on GPUs they sit inside a node when U divides the GPUs per node.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from attnbench.core.cp import Degrees
from attnbench.distributed.blocks import BlockFn
from attnbench.distributed.layout import Layout, make_layout
from attnbench.distributed.ring import RankStats, ring_attention


@dataclass(frozen=True)
class Placement:
    """Which global positions each rank holds for a (Ulysses, ring) split."""

    degrees: Degrees
    ring_layout: Layout  # over the R ring positions

    def ring_pos(self, rank: int) -> int:
        return rank // self.degrees.ulysses

    def member(self, rank: int) -> int:
        return rank % self.degrees.ulysses

    def length(self, rank: int) -> int:
        return self.ring_layout.length(self.ring_pos(rank)) // self.degrees.ulysses

    def positions(self, rank: int) -> torch.Tensor:
        """(n,) global positions of `rank`'s piece, in local order."""
        shard = self.ring_layout.positions(self.ring_pos(rank))
        n = self.length(rank)
        return shard[self.member(rank) * n:(self.member(rank) + 1) * n]


def make_placement(seq: int, causal: bool, d: Degrees, layout: str = "zigzag") -> Placement:
    return Placement(d, make_layout(seq, d.ring, causal, layout))


@dataclass(frozen=True)
class Groups:
    """This rank's process groups: its Ulysses group and its ring (None: the whole world)."""

    ulysses: object | None
    ring: object | None
    ring_ranks: tuple[int, ...] | None  # global rank at each ring position (None: identity)


def make_groups(d: Degrees, rank: int) -> Groups:
    """Create every subgroup (all ranks must call this, in the same order) and keep this rank's."""
    if d.ulysses == 1 or d.ring == 1:
        return Groups(None, None, None)
    mine_u = mine_r = None
    for i in range(d.ring):  # Ulysses groups: consecutive ranks
        ranks = list(range(i * d.ulysses, (i + 1) * d.ulysses))
        g = dist.new_group(ranks)
        mine_u = g if rank in ranks else mine_u
    ring_ranks = None
    for u in range(d.ulysses):  # rings: one member of every Ulysses group
        ranks = [u + d.ulysses * i for i in range(d.ring)]
        g = dist.new_group(ranks)
        if rank in ranks:
            mine_r, ring_ranks = g, tuple(ranks)
    return Groups(mine_u, mine_r, ring_ranks)


def replicate_kv(x: torch.Tensor, ulysses: int) -> torch.Tensor:
    """(B, Hkv, n, D) → (B, U, n, D) when Hkv < U divides U (core/cp.kv_heads_after), else x."""
    hkv = x.shape[1]
    return x if hkv % ulysses == 0 else x.repeat_interleave(ulysses // hkv, dim=1)


def _alltoall(x: torch.Tensor, group, stats: RankStats) -> torch.Tensor:
    """x (U, ...) contiguous: part j goes to group member j; returns (U, ...) part j from j."""
    out = torch.empty_like(x)
    t0 = time.perf_counter()
    dist.all_to_all_single(out, x, group=group)
    stats.a2a_s += time.perf_counter() - t0
    u = x.shape[0]
    sent = x.numel() * x.element_size() * (u - 1) // u
    stats.a2a_bytes += sent
    stats.bytes_sent += sent
    return out


def pack_seq(x: torch.Tensor, u: int) -> torch.Tensor:
    """(B, H, n, D) sequence piece → (U, B, H/U, n, D): part j holds the heads member j computes."""
    b, h, n, dd = x.shape
    return x.reshape(b, u, h // u, n, dd).transpose(0, 1).contiguous()


def unpack_seq(got: torch.Tensor) -> torch.Tensor:
    """(U, B, H/U, n, D), part j from member j → (B, H/U, U·n, D) over the group's positions."""
    u, b, hu, n, dd = got.shape
    return got.permute(1, 2, 0, 3, 4).reshape(b, hu, u * n, dd)


def pack_heads(x: torch.Tensor, u: int) -> torch.Tensor:
    """(B, H/U, U·n, D) → (U, B, H/U, n, D): part j holds member j's piece of the sequence."""
    b, hu, un, dd = x.shape
    return x.reshape(b, hu, u, un // u, dd).permute(2, 0, 1, 3, 4).contiguous()


def unpack_heads(got: torch.Tensor) -> torch.Tensor:
    """(U, B, H/U, n, D), part j = member j's heads → (B, H, n, D)."""
    u, b, hu, n, dd = got.shape
    return got.permute(1, 0, 2, 3, 4).reshape(b, hu * u, n, dd)


def _exchange(x: torch.Tensor, u: int, pack, unpack, group, stats: RankStats) -> torch.Tensor:
    t0 = time.perf_counter()
    send = pack(x, u)
    stats.post_s += time.perf_counter() - t0
    return unpack(_alltoall(send, group, stats))


def cp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, placement: Placement, rank: int,
                 groups: Groups, block: str | BlockFn = "sdpa", stats: RankStats | None = None,
                 sync: Callable[[], None] = lambda: None) -> torch.Tensor:
    """This rank's output piece (B, Hq, n, D) of exact attention over the whole sequence.

    q (B, Hq, n, D), k/v (B, Hkv, n, D): the rank's piece at placement.positions(rank)."""
    stats = stats if stats is not None else RankStats()
    d = placement.degrees
    a2a_before = stats.a2a_s
    if d.ulysses > 1:
        k, v = replicate_kv(k, d.ulysses), replicate_kv(v, d.ulysses)
        q, k, v = (_exchange(t, d.ulysses, pack_seq, unpack_seq, groups.ulysses, stats) for t in (q, k, v))
        sync()
    out = ring_attention(q, k, v, placement.ring_layout, placement.ring_pos(rank), block, stats,
                         group=groups.ring, sync=sync, ranks=groups.ring_ranks)
    if d.ulysses > 1:
        out = _exchange(out, d.ulysses, pack_heads, unpack_heads, groups.ulysses, stats)
        sync()
    stats.comm_wait_s += stats.a2a_s - a2a_before
    return out


def _swap(sends: list[torch.Tensor]) -> list[torch.Tensor]:
    """What all_to_all_single delivers: member i receives part i of every member's buffer."""
    return [torch.stack([s[i] for s in sends]) for i in range(len(sends))]


def simulate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, placement: Placement,
             block: str | BlockFn = "eager") -> torch.Tensor:
    """The whole output computed in this process, with the same packing as the ranks and the
    all-to-all done by indexing (no torch.distributed); the ring part by ring.simulate.

    q, k, v: full (B, H, L, D) tensors; returns the full output."""
    from attnbench.distributed.ring import simulate as ring_simulate

    d = placement.degrees
    u, world = d.ulysses, d.world
    pieces = [[t[:, :, placement.positions(r)] for t in (q, replicate_kv(k, u), replicate_kv(v, u))]
              for r in range(world)]
    heads = {}  # ulysses member j → its head shards over the whole sequence, ring order
    for j in range(u):
        shards = []
        for i in range(d.ring):  # ring position i's group: ranks U·i …
            group = [pieces[u * i + m] for m in range(u)]
            shards.append([unpack_seq(_swap([pack_seq(g[t], u) for g in group])[j]) for t in range(3)])
        full = [torch.empty(*s.shape[:2], q.shape[2], s.shape[3], dtype=q.dtype) for s in shards[0]]
        for i, sh in enumerate(shards):
            pos = placement.ring_layout.positions(i)
            for t in range(3):
                full[t][:, :, pos] = sh[t]
        heads[j], _ = ring_simulate(*full, placement.ring_layout, block)
    out = torch.empty(q.shape, dtype=q.dtype)
    for i in range(d.ring):
        pos = placement.ring_layout.positions(i)
        back = _swap([pack_heads(heads[j][:, :, pos], u) for j in range(u)])
        for m in range(u):
            out[:, :, placement.positions(u * i + m)] = unpack_heads(back[m])
    return out


def bytes_model(batch: int, heads: int, kv_heads: int, head_dim: int, itemsize: int, placement: Placement,
                rank: int) -> int:
    """Bytes `rank` sends in one call by the formulas of core/cp.py: the Ulysses all-to-alls of
    an even split, and the ring's R−1 K/V shards (the shards this ring position forwards: its
    own, then those that arrive, all but its successor's — uneven shards counted exactly)."""
    from attnbench.core.cp import kv_heads_after, rank_bytes, ring_bytes_per_step

    d = placement.degrees
    a2a = rank_bytes(batch, heads, kv_heads, placement.ring_layout.seq, head_dim, itemsize, d)["a2a"]
    kv = kv_heads_after(heads, kv_heads, d.ulysses) // d.ulysses
    i, lay = placement.ring_pos(rank), placement.ring_layout
    ring = sum(ring_bytes_per_step(batch, kv, lay.length((i - t) % d.ring), head_dim, itemsize)
               for t in range(d.ring - 1))
    return a2a + ring
