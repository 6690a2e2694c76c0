"""How the sequence is split across ranks, and which (query, key) chunk pairs each ring step
must compute.

Non-causal: rank r holds one contiguous shard. Causal: the zig-zag layout of ring/context
parallel attention (used by Megatron-LM's context parallelism and zigzag ring-flash-attention):
the sequence is cut into 2·P chunks and rank r holds chunks r and 2P−1−r, so every rank holds
one early and one late chunk and the causal work per rank is (nearly) equal. `contiguous` is
kept for causal too, to show the imbalance the zig-zag removes.

Lengths that do not divide evenly give uneven shards (chunk sizes differ by at most one);
nothing is padded, and every rank knows every shard's shape from the layout, so the ring's
receive buffers are sized exactly.

Causal masks here are for self-attention (Lq == Lk): query at global position i sees key j iff
j <= i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnbench.variants.ring import LAYOUTS

Range = tuple[int, int]  # [start, end) of global positions


def split(n: int, parts: int) -> list[Range]:
    """[0, n) cut into `parts` consecutive ranges; the first n % parts get one more position."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size))
        start += size
    return out


@dataclass(frozen=True)
class Layout:
    """Per rank, the global ranges it holds, in local order (ascending positions)."""

    seq: int
    world: int
    causal: bool
    kind: str
    chunks: tuple[tuple[Range, ...], ...]

    def __post_init__(self):
        flat = sorted(r for ranges in self.chunks for r in ranges)
        covered = [s for s, _ in flat] == [0] + [e for _, e in flat[:-1]] and flat[-1][1] == self.seq
        ascending = all(a[1] <= b[0] for ranges in self.chunks for a, b in zip(ranges, ranges[1:]))
        if len(self.chunks) != self.world or not covered or not ascending:
            raise ValueError(f"layout chunks {self.chunks} must partition [0, {self.seq}) into "
                             f"{self.world} ranks, each rank's ranges ascending")

    def length(self, rank: int) -> int:
        return sum(e - s for s, e in self.chunks[rank])

    def positions(self, rank: int) -> torch.Tensor:
        """(L_r,) global positions held by `rank`, in local order."""
        return torch.cat([torch.arange(s, e) for s, e in self.chunks[rank]])


def make_layout(seq: int, world: int, causal: bool, kind: str = "zigzag") -> Layout:
    if kind not in LAYOUTS:
        raise ValueError(f"unknown layout '{kind}'; accepted: {', '.join(LAYOUTS)}")
    if seq < 2 * world:
        raise ValueError(f"seq={seq} is too short for {world} ranks (needs at least {2 * world})")
    if causal and kind == "zigzag":
        c = split(seq, 2 * world)
        chunks = tuple((c[r], c[2 * world - 1 - r]) for r in range(world))
    else:
        chunks = tuple((c,) for c in split(seq, world))
    return Layout(seq, world, causal, kind if causal else "contiguous", chunks)


# ---------------------------------------------------------------- the work of one ring step
@dataclass(frozen=True)
class Call:
    """One block computation: local query rows q_slice against local key rows k_slice.

    kind: "full" (every pair attended) or "causal" (q and k hold the same ascending positions,
    so the local lower triangle is exactly the global causal mask). Chunks of a layout
    partition the sequence, so a chunk pair is always full, empty or the same chunk."""

    q_slice: tuple[int, int]
    k_slice: tuple[int, int]
    kind: str
    pairs: int  # (query, key) pairs this call attends, per (batch, head)


def _chunk_kind(q: Range, k: Range, causal: bool) -> str:
    if not causal or k[1] - 1 <= q[0]:  # every key at or before the first query
        return "full"
    if k[0] > q[1] - 1:  # every key after the last query
        return "none"
    if q != k:
        raise ValueError(f"chunks {q} and {k} overlap partially; a layout partitions the sequence")
    return "causal"


def _offsets(ranges: tuple[Range, ...]) -> list[tuple[int, int]]:
    out, at = [], 0
    for s, e in ranges:
        out.append((at, at + e - s))
        at += e - s
    return out


def plan(layout: Layout, q_rank: int, k_rank: int) -> list[Call]:
    """The calls rank q_rank makes on the K/V shard of k_rank (empty chunk pairs skipped)."""
    qs, ks = layout.chunks[q_rank], layout.chunks[k_rank]
    if layout.causal and qs == ks:  # own shard: positions ascend on both sides, one causal call
        n = layout.length(q_rank)
        return [Call((0, n), (0, n), "causal", n * (n + 1) // 2)]
    calls: list[Call] = []
    q_off, k_off = _offsets(qs), _offsets(ks)
    for qr, qo in zip(qs, q_off):
        nq = qr[1] - qr[0]
        for kr, ko in zip(ks, k_off):
            kind = _chunk_kind(qr, kr, layout.causal)
            if kind == "none" or nq == 0 or kr[1] == kr[0]:
                continue
            pairs = nq * (kr[1] - kr[0]) if kind == "full" else nq * (nq + 1) // 2
            prev = calls[-1] if calls else None
            if kind == "full" and prev and prev.kind == "full" and prev.q_slice == qo and prev.k_slice[1] == ko[0]:
                calls[-1] = Call(qo, (prev.k_slice[0], ko[1]), "full", prev.pairs + pairs)  # adjacent keys
            else:
                calls.append(Call(qo, ko, kind, pairs))
    return _merge_rows(calls)


def _merge_rows(calls: list[Call]) -> list[Call]:
    """Fuse full calls on adjacent query rows that read the same keys into one call."""
    out: list[Call] = []
    for c in calls:
        prev = out[-1] if out else None
        if prev and c.kind == prev.kind == "full" and prev.k_slice == c.k_slice and prev.q_slice[1] == c.q_slice[0]:
            out[-1] = Call((prev.q_slice[0], c.q_slice[1]), c.k_slice, "full", prev.pairs + c.pairs)
        else:
            out.append(c)
    return out


def rank_pairs(layout: Layout, rank: int) -> int:
    """Analytic attended pairs of one rank over the whole ring, per (batch, head): its queries
    times all keys (non-causal), or Σ (i + 1) over the positions i it holds (causal)."""
    if not layout.causal:
        return layout.length(rank) * layout.seq
    return sum((s + 1 + e) * (e - s) // 2 for s, e in layout.chunks[rank])  # Σ_{i=s}^{e-1} (i+1)
