"""Graph attention (Veličković et al. 2018, "Graph Attention Networks") in our q/k/v terms.

The L positions are the nodes of a sparse graph; node i attends only its neighbours N(i):
    out_i = Σ_{j∈N(i)} softmax_j(q_i·k_j / √D) v_j
(GAT scores an edge with a learned a(Wh_i, Wh_j) and LeakyReLU; here the score is the dot
product, so the cost model is that of attention restricted to the edges.)

graph (built in setup, deterministic from the params):
    random  every node has `degree` out-neighbours (default 16): itself and degree−1 distinct
            others drawn uniformly from `seed` (in-degrees vary: "regular-ish").
    ring    the `degree` nearest nodes on a cycle (offsets 0, +1, −1, +2, ...).
    grid    a √L × √L grid: itself and its 4 neighbours (no wrap; `degree` is ignored).
Backends: `edge` computes scores per edge and a scatter softmax (scatter_reduce amax, index_add):
O(E·D) time and memory, no L×L tensor. `eager` is the dense masked reference; `sdpa` passes a
dense (L, L) bool mask to torch SDPA (both O(L²)). exact w.r.t. the graph (oracle "reference"); the error
against full attention is reported too. Causal: unsupported. Lq == Lk (nodes attend nodes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.shared import (
    attention_flops,
    check_heads,
    fill_defaults,
    io_bytes,
    mask_workspace,
    repeat_kv,
    softmax_attention,
)

DEFAULTS = {"degree": 16, "graph": "random", "seed": 0}
GRAPHS = ("random", "ring", "grid")


def _random_neighbours(n: int, degree: int, seed: int) -> torch.Tensor:
    """(n, degree−1) distinct offsets in [1, n) per node, redrawn where they collide."""
    g = torch.Generator().manual_seed(seed)
    if degree <= 1:
        return torch.zeros(n, 0, dtype=torch.long)
    off = torch.randint(1, n, (n, degree - 1), generator=g)
    while True:
        off, _ = off.sort(dim=1)
        dup = torch.zeros_like(off, dtype=torch.bool)
        dup[:, 1:] = off[:, 1:] == off[:, :-1]
        if not dup.any():
            return off
        off[dup] = torch.randint(1, n, (int(dup.sum()),), generator=g)


def edges(problem: Problem, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(dst, src) int64 (E,): node dst attends node src; sorted by dst, self-loops included."""
    n, kind = problem.seq_k, problem.param("graph")
    degree = min(int(problem.param("degree")), n)
    nodes = torch.arange(n)
    if kind == "random":
        nbrs = torch.cat([torch.zeros(n, 1, dtype=torch.long),
                          _random_neighbours(n, degree, int(problem.param("seed")))], 1)
        src = (nodes[:, None] + nbrs) % n
    elif kind == "ring":
        offsets = torch.tensor([0] + [s * o for o in range(1, degree) for s in (1, -1)][:degree - 1])
        src = (nodes[:, None] + offsets) % n
    else:  # grid
        side = math.isqrt(n)
        r, c = nodes // side, nodes % side
        cand = [(r, c), (r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
        src = torch.stack([rr * side + cc for rr, cc in cand], 1)
        ok = torch.stack([(rr >= 0) & (rr < side) & (cc >= 0) & (cc < side) for rr, cc in cand], 1)
        dst = nodes[:, None].expand_as(src)[ok]
        return dst.to(device), src[ok].to(device)
    dst = nodes[:, None].expand_as(src)
    return dst.reshape(-1).to(device), src.reshape(-1).to(device)


def dense_mask(problem: Problem, device: torch.device | None = None) -> torch.Tensor:
    dst, src = edges(problem, device)
    mask = torch.zeros(problem.seq_q, problem.seq_k, dtype=torch.bool, device=device)
    mask[dst, src] = True
    return mask


def gat_reference(q, k, v, problem: Problem) -> torch.Tensor:
    return softmax_attention(q, k, v, mask=dense_mask(problem, q.device))


def edge_attention(q, k, v, dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Scatter softmax over each node's in-edges. q (B, H, L, D) -> (B, H, L, D)."""
    groups, dtype = q.shape[1] // k.shape[1], q.dtype
    q, k, v = q.float(), repeat_kv(k, groups).float(), repeat_kv(v, groups).float()
    rows = lambda x, idx: x.index_select(2, idx)  # noqa: E731  (B, H, E, ...) one row per edge
    s = (rows(q, dst) * rows(k, src)).sum(-1) / math.sqrt(q.shape[-1])  # (B, H, E)  2·E·D
    m = torch.full(q.shape[:-1], float("-inf"), device=q.device).scatter_reduce_(
        2, dst.expand_as(s), s, "amax")  # (B, H, L) max score over each node's edges
    p = torch.exp(s - rows(m, dst))  # (B, H, E)
    den = torch.zeros(q.shape[:-1], device=q.device).index_add_(2, dst, p)  # (B, H, L)
    num = torch.zeros(q.shape, device=q.device).index_add_(2, dst, rows(v, src).mul_(p[..., None]))  # 2·E·D
    return (num / den[..., None]).to(dtype)  # every node has a self-loop: den > 0


def _backends() -> tuple[Backend, ...]:
    def build_edge(problem: Problem, device: torch.device) -> Fn:
        dst, src = edges(problem, device)
        return lambda q, k, v: edge_attention(q, k, v, dst, src)

    def build_eager(problem: Problem, device: torch.device) -> Fn:
        mask = dense_mask(problem, device)
        return lambda q, k, v: softmax_attention(q, k, v, mask=mask)

    def build_sdpa(problem: Problem, device: torch.device) -> Fn:
        mask = dense_mask(problem, device)
        gqa = problem.groups > 1
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

    return (Backend("edge", build_edge, "per-edge scores and a scatter softmax (scatter_reduce/index_add), O(E·D)",
                    workspace=edge_workspace),
            Backend("eager", build_eager, "dense L×L masked softmax (the reference)", materializes=True),
            Backend("sdpa", build_sdpa, "torch SDPA with a dense L×L bool mask", workspace=mask_workspace))


def edge_workspace(p: Problem) -> float:
    """edge_attention's peak: the gathered query and key rows of every edge and their product,
    three fp32 (B, Hq, E, D) tensors (K and V repeated to Hq heads first when grouped)."""
    repeated = 2 * p.batch * p.heads * p.seq_k * p.head_dim * 4 if p.kv_heads < p.heads else 0
    return 3.0 * 4 * p.batch * p.heads * num_edges(p) * p.head_dim + repeated


def num_edges(p: Problem) -> int:
    n = p.seq_k
    if p.param("graph") == "grid":
        side = math.isqrt(n)
        return n + 4 * side * (side - 1)  # self-loops + both directions of each grid edge
    return n * min(int(p.param("degree")), n)


def gat_supports(p: Problem) -> Reason:
    if p.causal:
        return "gat attends a graph's neighbours, which have no causal order (causal is unsupported)"
    if p.mode == "decode" or p.seq_q != p.seq_k:
        return f"gat needs Lq == Lk (nodes attend nodes); got Lq={p.seq_q}, Lk={p.seq_k}"
    if p.param("graph") not in GRAPHS:
        return f"unknown graph '{p.param('graph')}'; accepted: {', '.join(GRAPHS)}"
    if p.param("graph") == "grid" and math.isqrt(p.seq_k) ** 2 != p.seq_k:
        return f"graph=grid needs a square number of nodes (got L={p.seq_k})"
    if int(p.param("degree")) < 1:
        return f"degree must be >= 1 (got {p.param('degree')})"
    return check_heads(p)


def gat_picture(p: Problem) -> torch.Tensor:
    small = p if p.seq_k <= 1024 and gat_supports(p) is None else fill_defaults(
        Problem(seq_q=64, seq_k=64, params=p.params), **DEFAULTS)
    return dense_mask(small).float()


GAT = Variant(
    name="gat", family="graph", oracle="reference",
    description="graph attention over a sparse graph's edges (graph=random|ring|grid, degree=16)",
    time="O(L·d)", memory="O(L·d)", reference=gat_reference,
    flops=lambda p: attention_flops(p, pairs=num_edges(p)),  # 4·B·Hq·E·D: scores and sums per edge
    bytes=io_bytes, backends=_backends(), resolve=lambda p: fill_defaults(p, **DEFAULTS),
    why_unsupported=gat_supports, full_attention_error=True, defaults=DEFAULTS, picture=gat_picture)

VARIANTS = (GAT,)
