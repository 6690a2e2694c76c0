"""Context-parallel strategies as arithmetic: how ring, Ulysses and hybrid split one attention
call over P ranks, when a split is possible, and the bytes each rank sends. No torch here: the
runnable variants, the ranks and the scaling model (attnbench.distributed.cpmodel) all read
these rules, so the refusal reasons and the byte counts are one.

    ring      the sequence split over R ranks; K/V shards travel around the ring (R−1 sends of
              one K/V shard per rank, overlapped with compute). Causal: zig-zag shards.
    ulysses   the sequence split over U ranks; an all-to-all trades sequence shards for head
              shards (q, k, v: 3 all-to-alls), each rank attends over the whole sequence for
              Hq/U heads, an all-to-all trades them back (the 4th). DeepSpeed-Ulysses
              (Jacobs et al. 2023).
    hybrid    U × R = P: Ulysses inside groups of U consecutive ranks, ring across the R groups
              (USP, Fang & Zhao 2024; LoongTrain's 2D attention, Gu et al. 2024).

Heads under Ulysses of degree U: Hq must divide by U. K/V heads either divide by U (each rank
takes Hkv/U) or are fewer than U and divide it: each K/V head is then replicated U/Hkv times
before the all-to-all, so every rank receives the one K/V head its query heads use (the bytes
sent and the memory count the replicas). Anything else is refused with the reason.

Bytes (per rank, one forward call, s = itemsize; only bytes that leave the rank are counted):
    ring step     2·B·Hkv_r·n·D·s                  n: the shard held; R−1 steps
    all-to-all    (U−1)/U · m                      m: the tensor the rank holds before it
    ulysses       q, k, v in and the output back:  (U−1)/U · (2·Hq + 2·Hkv') · B·(L/U)·D·s
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("ring", "ulysses", "hybrid")


@dataclass(frozen=True)
class Degrees:
    """P = ulysses × ring ranks; ranks u + U·i form ring i's Ulysses group (consecutive ranks)."""

    ulysses: int
    ring: int

    @property
    def world(self) -> int:
        return self.ulysses * self.ring


def degrees(strategy: str, world: int, ulysses: int | None = None) -> Degrees:
    """The degrees of `strategy` on `world` ranks (hybrid: `ulysses` given, ring = world / it)."""
    if strategy == "ring":
        return Degrees(1, world)
    if strategy == "ulysses":
        return Degrees(world, 1)
    if strategy == "hybrid":
        if not ulysses or world % ulysses:
            raise ValueError(f"hybrid needs a Ulysses degree dividing world_size={world} (got {ulysses})")
        return Degrees(ulysses, world // ulysses)
    raise ValueError(f"unknown strategy '{strategy}'; accepted: {', '.join(STRATEGIES)}")


def kv_heads_after(heads: int, kv_heads: int, ulysses: int) -> int:
    """K/V heads after replication for a Ulysses degree (Hkv, or U when Hkv < U divides U)."""
    return kv_heads if kv_heads % ulysses == 0 else ulysses


def heads_reason(heads: int, kv_heads: int, ulysses: int) -> str | None:
    """Why Ulysses of degree `ulysses` cannot split these heads, or None."""
    if ulysses == 1:
        return None
    if heads % ulysses:
        return f"Ulysses degree {ulysses} must divide the query heads ({heads})"
    if kv_heads % ulysses and ulysses % kv_heads:
        return (f"KV heads ({kv_heads}) must divide by the Ulysses degree {ulysses} or divide it "
                "(then each KV head is replicated)")
    return None


def seq_multiple(d: Degrees, causal: bool) -> int:
    """The sequence must be a multiple of this for an even split (1: any length works)."""
    if d.ulysses == 1:
        return 1  # the ring alone takes uneven shards
    return d.world * (2 if causal and d.ring > 1 else 1)  # zig-zag: 2·R chunks, each cut U ways


def split_reason(seq: int, heads: int, kv_heads: int, d: Degrees, causal: bool) -> str | None:
    """Why this problem cannot be split with these degrees, or None."""
    if why := heads_reason(heads, kv_heads, d.ulysses):
        return why
    m = seq_multiple(d, causal)
    if seq % m:
        what = "2 × world_size (zig-zag chunks cut across each Ulysses group)" if m != d.world else "world_size"
        return f"seq={seq} must be a multiple of {m} = {what}"
    if seq < 2 * d.world:
        return f"seq={seq} is too short for {d.world} ranks (needs at least {2 * d.world})"
    return None


def ring_bytes_per_step(batch: int, kv_heads: int, shard: int, head_dim: int, itemsize: int) -> int:
    """One ring step: the K and V of one shard."""
    return 2 * batch * kv_heads * shard * head_dim * itemsize


def alltoall_bytes(numel: int, itemsize: int, group: int) -> int:
    """Bytes a rank sends in an all-to-all of a tensor of `numel` elements split evenly over
    `group` ranks (its own part stays)."""
    return numel * itemsize * (group - 1) // group


def rank_bytes(batch: int, heads: int, kv_heads: int, seq: int, head_dim: int, itemsize: int,
               d: Degrees) -> dict[str, int]:
    """Bytes one rank sends in one forward call (even split): all-to-all and ring parts."""
    n = seq // d.world  # positions a rank holds outside the attention
    kv_u = kv_heads_after(heads, kv_heads, d.ulysses)
    a2a = 0
    if d.ulysses > 1:
        per_tensor = [batch * h * n * head_dim for h in (heads, kv_u, kv_u, heads)]  # q, k, v in; out back
        a2a = sum(alltoall_bytes(x, itemsize, d.ulysses) for x in per_tensor)
    ring = 0
    if d.ring > 1:
        shard = seq // d.ring  # a ring shard, after the Ulysses all-to-all
        ring = (d.ring - 1) * ring_bytes_per_step(batch, kv_u // d.ulysses, shard, head_dim, itemsize)
    return {"a2a": a2a, "ring": ring, "total": a2a + ring}
