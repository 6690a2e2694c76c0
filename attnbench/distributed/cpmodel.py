"""A scaling model of context-parallel attention (ring, Ulysses, hybrid): predicted forward
latency of one attention layer, memory per GPU, communication share and strong-scaling
efficiency at P ranks — for hardware this machine does not have. No torch here.

    compute   T1 = 4·B·Hq·D·pairs / rate, the single-device time at a measured attention rate
              (pairs: L² or L(L+1)/2 causal); every strategy balances it (heads for Ulysses, the
              zig-zag for a causal ring), so a rank computes T1/P.
    comm      α–β per message: t = α + bytes/β on the link the group uses.
              ring (R > 1): R steps of compute c = T1/(P·R); R−1 of them also send one K/V shard
                (2 messages, K and V): step = c + max(0, t_kv − overlap·c); overlap = 1 hides the
                send behind the step's compute entirely (NCCL on its own SMs), 0 hides nothing.
              ulysses (U > 1): 4 blocking all-to-alls (q, k, v, out), each (U−1)·(α + m/(U·β)),
                m the tensor a rank holds (core/cp.py); never overlapped.
              hybrid: both — all-to-alls in groups of U consecutive ranks, the ring across them.
    links     a group inside one node (≤ gpus_per_node consecutive ranks) uses the intra-node link,
              otherwise the inter-node link bounds it (the ring moves in lock step).
    memory    per GPU: the KV cache of every layer for the positions it keeps (prefill), plus one
              layer's working set — its q, out, an fp32 accumulator and, on a ring, two K/V shards
              in flight. Weights, MLP activations and framework workspaces are NOT counted
              (assumed sharded by tensor/FSDP parallelism or small by comparison).

Honest limits: a model, not a measurement. It ignores stragglers, congestion between
concurrent rings, NCCL's algorithm choices, all-to-all contention at large U, kernel-efficiency
changes with block size, and the backward pass. On a CPU host the ranks share cores
(`contention`: ranks × threads / cores, at least 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnbench.core.cp import Degrees, kv_heads_after, split_reason

GIB = 1024**3


@dataclass(frozen=True)
class Link:
    """One direction of a GPU's link: bandwidth (bytes/s) and per-message latency (s)."""

    name: str
    bandwidth: float
    latency: float
    source: str = ""


# Nominal per-GPU, per-direction bandwidths from the vendors' published figures; latencies are
# order-of-magnitude assumptions for one small message through the fabric (vendors publish switch
# port-to-port latencies, not end-to-end NCCL ones): override with --link-bandwidth/--link-latency.
LINKS: dict[str, Link] = {
    "nvlink4": Link("NVLink 4", 450e9, 2e-6,
                    "NVIDIA H100 datasheet: 900 GB/s bidirectional NVLink per GPU (450 GB/s each way)"),
    "nvlink5": Link("NVLink 5", 900e9, 2e-6,
                    "NVIDIA Blackwell (B200) datasheet: 1.8 TB/s bidirectional NVLink per GPU"),
    "ib-ndr": Link("InfiniBand NDR", 50e9, 5e-6,
                   "NVIDIA Quantum-2 / ConnectX-7: 400 Gb/s per port, one port per GPU"),
    "ib-xdr": Link("InfiniBand XDR", 100e9, 5e-6,
                   "NVIDIA Quantum-X800 / ConnectX-8: 800 Gb/s per port, one port per GPU"),
    "100gbe": Link("100 GbE", 12.5e9, 10e-6, "IEEE 802.3 100 Gb/s Ethernet (RoCE), one port per GPU"),
    "400gbe": Link("400 GbE", 50e9, 10e-6, "IEEE 802.3bs 400 Gb/s Ethernet (RoCE), one port per GPU"),
}


@dataclass(frozen=True)
class Shape:
    """The attention of one model layer (B, Hq, Hkv, D) and how many layers keep a KV cache."""

    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    itemsize: int
    causal: bool = True
    layers: int = 1


@dataclass(frozen=True)
class Setting:
    """The machine the prediction is for."""

    rate: float  # single-device attention FLOP/s, measured (or assumed: say so)
    intra: Link
    inter: Link
    gpus_per_node: int = 8
    overlap: float = 1.0  # share of a ring step's compute that can hide its send
    memory: float = 80 * GIB  # per GPU
    contention: float = 1.0  # compute slow-down when ranks share cores (CPU hosts)
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Prediction:
    strategy: str
    degrees: Degrees
    latency: float  # s, one forward attention layer
    compute: float  # s per rank
    comm_exposed: float  # s not hidden behind compute
    comm_total: float  # s on the wire per rank
    memory: float  # bytes per GPU
    efficiency: float  # T1 / (P · T_P)
    reason: str | None  # why infeasible; None when feasible

    @property
    def comm_share(self) -> float:
        return self.comm_exposed / self.latency if self.latency > 0 else 0.0

    @property
    def label(self) -> str:
        d = self.degrees
        return f"{self.strategy} {d.ulysses}×{d.ring}" if self.strategy == "hybrid" else self.strategy


def pairs(seq: int, causal: bool) -> int:
    return seq * (seq + 1) // 2 if causal else seq * seq


def single_device_seconds(s: Shape, seq: int, rate: float) -> float:
    """T1: QKᵀ and PV, 2·D FLOPs each per attended pair and query head."""
    return 4.0 * s.batch * s.heads * s.head_dim * pairs(seq, s.causal) / rate


def message(link: Link, nbytes: float) -> float:
    return link.latency + nbytes / link.bandwidth


def alltoall_seconds(link: Link, nbytes: float, group: int) -> float:
    """Pairwise all-to-all of a tensor of `nbytes` held per rank: U−1 messages of nbytes/U."""
    return (group - 1) * message(link, nbytes / group)


def ring_seconds(step_compute: float, steps: int, kv_bytes: float, link: Link, overlap: float) -> tuple[float, float]:
    """(time, exposed communication) of `steps` ring steps; all but the last send K and V."""
    send = 2 * message(link, kv_bytes / 2)  # K and V, one message each
    exposed = max(0.0, send - overlap * step_compute) if steps > 1 else 0.0
    return steps * step_compute + (steps - 1) * exposed, (steps - 1) * exposed


def link_for(ranks_spanned: int, st: Setting) -> Link:
    return st.intra if ranks_spanned <= st.gpus_per_node else st.inter


def memory_per_gpu(s: Shape, seq: int, d: Degrees) -> float:
    """KV cache of all layers for the positions kept, plus one layer's working set (see module doc)."""
    kv_u = kv_heads_after(s.heads, s.kv_heads, d.ulysses) // d.ulysses  # K/V heads a rank keeps
    shard = seq / d.ring  # positions of a rank's attention (after the all-to-all)
    per_pos_kv = 2 * s.batch * kv_u * s.head_dim * s.itemsize
    cache = per_pos_kv * shard * s.layers
    q_heads = s.heads // d.ulysses
    work = s.batch * q_heads * shard * s.head_dim * (2 * s.itemsize + 4)  # q, out, fp32 accumulator
    in_flight = per_pos_kv * shard * (2 if d.ring > 1 else 1)
    return cache + work + in_flight


def predict(s: Shape, seq: int, strategy: str, d: Degrees, st: Setting) -> Prediction:
    """The prediction for one (strategy, degrees) at length `seq` on P = d.world GPUs."""
    t1 = single_device_seconds(s, seq, st.rate)
    p = d.world
    compute = t1 / p * st.contention
    a2a = 0.0
    if d.ulysses > 1:
        link = link_for(d.ulysses, st)
        kv_u = kv_heads_after(s.heads, s.kv_heads, d.ulysses)
        per = s.batch * (seq / p) * s.head_dim * s.itemsize  # bytes per head of a rank's piece
        a2a = sum(alltoall_seconds(link, per * h, d.ulysses) for h in (s.heads, kv_u, kv_u, s.heads))
    ring_exposed = ring_total = 0.0
    latency = compute + a2a
    if d.ring > 1:
        kv_u = kv_heads_after(s.heads, s.kv_heads, d.ulysses) // d.ulysses
        kv_bytes = 2 * s.batch * kv_u * (seq / d.ring) * s.head_dim * s.itemsize
        link = link_for(p, st)
        _, ring_exposed = ring_seconds(compute / d.ring, d.ring, kv_bytes, link, st.overlap)
        ring_total = (d.ring - 1) * 2 * message(link, kv_bytes / 2)
        latency += ring_exposed
    mem = memory_per_gpu(s, seq, d)
    why = split_reason(seq, s.heads, s.kv_heads, d, s.causal)
    if why is None and mem > st.memory:
        why = f"needs {mem / GIB:.0f} GiB per GPU > {st.memory / GIB:.0f} GiB"
    return Prediction(strategy, d, latency, compute, a2a + ring_exposed, a2a + ring_total, mem,
                      t1 / (p * latency), why)


def candidates(world: int, heads: int) -> list[tuple[str, Degrees]]:
    """ring, ulysses and every hybrid U × R (1 < U < P, U dividing P and the heads)."""
    out = [("ring", Degrees(1, world)), ("ulysses", Degrees(world, 1))]
    out += [("hybrid", Degrees(u, world // u)) for u in range(2, world) if world % u == 0 and heads % u == 0]
    return out


def plan(s: Shape, seq: int, world: int, st: Setting) -> list[Prediction]:
    """ring, ulysses and the best hybrid (feasible first, then fastest) at (seq, world)."""
    preds = [predict(s, seq, name, d, st) for name, d in candidates(world, s.heads)]
    hybrids = [p for p in preds if p.strategy == "hybrid"]
    best_h = min(hybrids, key=lambda p: (p.reason is not None, p.latency), default=None)
    return [p for p in preds if p.strategy != "hybrid"] + ([best_h] if best_h else [])


def best(preds: list[Prediction]) -> Prediction | None:
    feasible = [p for p in preds if p.reason is None]
    return min(feasible, key=lambda p: p.latency) if feasible else None
