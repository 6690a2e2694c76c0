"""Reformer's LSH attention (Kitaev et al. 2020, "Reformer: The Efficient Transformer").

Per hash round r (`n_hashes`, default 4):
    hash     random rotations R_r (D × nb/2); bucket(x) = argmax([x̂R_r, −x̂R_r]) of the unit
             vector x̂. The paper shares Q and K; our inputs have separate q and k, so queries and
             keys are both normalised and hashed with the same rotations: similar directions
             land in the same bucket. nb = Lk / `bucket_size` (at least 2, even).
    sort     queries and keys, each by (bucket, position).
    attend   both sorted sequences cut into chunks of `bucket_size`; query chunk i attends key
             chunks i and i−1 (chunk 0 wraps to the last, as the paper's implementation does).
             Causal: keys after the query's position are masked.
    combine  outputs unsorted, rounds merged with weights softmax_r(lse_r) of their log-sum-exp.
             As in the paper's multi-round LSH attention, a key found in N_ij rounds has
             log N_ij subtracted from its score in each, so the merge is softmax over the union
             of the rounds' keys (counting N_ij costs n_hashes−1 compare passes per round).
Random rotations are drawn in setup from `seed`.

Honest limits: pairing query chunk i with key chunk i assumes queries and keys fill the
buckets alike, so self-attention only (Lq == Lk); L must be a multiple of bucket_size. Not exact: the
reference is exact attention and the error is measured. On random normal inputs LSH finds
little structure; `inputs="clustered"` gives queries and keys drawn around shared centres,
where LSH approaches exact attention as n_hashes grows. Only an `eager` backend: a fused one
would need the per-chunk log-sum-exp, which torch's public SDPA does not return.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.shared import check_heads, exact_reference, fill_defaults, io_bytes, repeat_kv

DEFAULTS = {"n_hashes": 4, "bucket_size": 64, "seed": 0, "inputs": "random"}
INPUTS = ("random", "clustered")


def n_buckets(problem: Problem) -> int:
    chunks = problem.seq_k // int(problem.param("bucket_size"))
    return max(2, chunks + chunks % 2)


def rotations(problem: Problem, device: torch.device) -> torch.Tensor:
    """(n_hashes, D, nb/2) Gaussian random rotations, drawn once in setup."""
    g = torch.Generator().manual_seed(int(problem.param("seed")))
    shape = (int(problem.param("n_hashes")), problem.head_dim, n_buckets(problem) // 2)
    return torch.randn(shape, generator=g).to(device)


def hash_buckets(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, L) bucket ids: argmax over [x̂R, −x̂R]."""
    r = F.normalize(x, dim=-1) @ rot  # (B, H, L, nb/2)   2·L·D·nb/2
    return torch.cat([r, -r], -1).argmax(-1)


def sorted_order(buckets: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort positions by (bucket, position). Returns perm (B, H, L), the position at each sorted
    slot, and chunk_of (B, H, L), the chunk each original position lands in."""
    length = buckets.shape[-1]
    pos = torch.arange(length, device=buckets.device)
    perm = (buckets * length + pos).argsort(-1)
    rank = torch.empty_like(perm).scatter_(-1, perm, pos.expand_as(perm))
    chunk_of = rank // chunk
    return perm, chunk_of.to(torch.int16) if length // chunk < 2**15 else chunk_of


def _gather_rows(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return x.gather(2, perm[..., None].expand(-1, -1, -1, x.shape[-1]))


def _with_previous(x: torch.Tensor) -> torch.Tensor:
    """(B, H, nC, C, ...) -> (B, H, nC, 2C, ...): each chunk followed by the one before it."""
    if x.shape[2] == 1:
        return x
    return torch.cat([x, x.roll(1, dims=2)], dim=3)


def times_seen(r: int, pq, pk, chunks_q, chunks_k, nc: int) -> torch.Tensor:
    """N_ij of the paper for the pairs of round r: in how many rounds key j is in query i's
    window (its chunk or the previous one). pq (B, H, nC, C), pk (B, H, nC, 2C) positions ->
    (B, H, nC, C, 2C) float, >= 1. Chunk ids are int16 to keep the pairwise compares cheap."""
    count = torch.ones(pq.shape + pk.shape[-1:], dtype=torch.int16, device=pq.device)
    for other, (cq_all, ck_all) in enumerate(zip(chunks_q, chunks_k)):
        if other == r:
            continue  # in its own round every pair is in the window
        cq = cq_all.gather(-1, pq.flatten(2)).view_as(pq)[..., :, None]
        ck = ck_all.gather(-1, pk.flatten(2)).view_as(pk)[..., None, :]
        count += (ck == cq) | (ck == (cq - 1) % nc)
    return count.float()


def lsh_round(q, kv, r, perms_q, perms_k, chunks_q, chunks_k, causal: bool, chunk: int):
    """Hash round r on fp32 q (B, H, L, D) and kv = [k | v] (B, H, L, 2D):
    returns (out (B, H, L, D), lse (B, H, L, 1)) in the original order."""
    b, h, length, d = q.shape
    nc = length // chunk
    with record_function("reformer.sort"):
        qc = _gather_rows(q, perms_q[r]).view(b, h, nc, chunk, d)
        kvc = _with_previous(_gather_rows(kv, perms_k[r]).view(b, h, nc, chunk, 2 * d))  # (B, H, nC, 2C, 2D)
    with record_function("reformer.attend"):
        s = (qc / math.sqrt(d)) @ kvc[..., :d].transpose(-2, -1)  # (B, H, nC, C, 2C)  2·C·2C·D
        pq = perms_q[r].view(b, h, nc, chunk)
        pk = _with_previous(perms_k[r].view(b, h, nc, chunk))  # (B, H, nC, 2C)
        if len(perms_q) > 1:  # count each key once over the rounds: subtract log N_ij
            s = s - times_seen(r, pq, pk, chunks_q, chunks_k, nc).log_()
        if causal:
            s = s.masked_fill(pk[..., None, :] > pq[..., :, None], float("-inf"))
        lse = s.logsumexp(-1, keepdim=True)  # (B, H, nC, C, 1)
        lse_safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)  # rows seeing nothing
        o = torch.exp(s - lse_safe) @ kvc[..., d:]  # (B, H, nC, C, D)  2·C·2C·D
    with record_function("reformer.combine"):  # undo the sort
        idx = perms_q[r][..., None]
        out = torch.empty_like(q).scatter_(2, idx.expand(-1, -1, -1, d), o.view(b, h, length, d))
        lse_out = torch.empty_like(q[..., :1]).scatter_(2, idx, lse.view(b, h, length, 1))
    return out, lse_out


def reformer_attention(q, k, v, problem: Problem, rot: torch.Tensor) -> torch.Tensor:
    """LSH attention over n_hashes rounds, merged by their log-sum-exp weights."""
    groups = q.shape[1] // k.shape[1]
    q32, k32 = q.float(), repeat_kv(k, groups).float()
    kv = torch.cat([k32, repeat_kv(v, groups).float()], -1)  # keys and values move together
    chunk = int(problem.param("bucket_size"))
    with record_function("reformer.hash"):
        buckets_q = [hash_buckets(q32, rot[r]) for r in range(rot.shape[0])]
        buckets_k = [hash_buckets(k32, rot[r]) for r in range(rot.shape[0])]
    with record_function("reformer.sort"):
        perms_q, chunks_q = zip(*(sorted_order(bq, chunk) for bq in buckets_q))
        perms_k, chunks_k = zip(*(sorted_order(bk, chunk) for bk in buckets_k))
    rounds = [lsh_round(q32, kv, r, perms_q, perms_k, chunks_q, chunks_k, problem.causal, chunk)
              for r in range(rot.shape[0])]
    with record_function("reformer.combine"):
        outs = torch.stack([o for o, _ in rounds])  # (R, B, H, L, D)
        lses = torch.stack([lse for _, lse in rounds])  # (R, B, H, L, 1)
        total = lses.logsumexp(0)
        total = torch.where(torch.isinf(total), torch.zeros_like(total), total)
        out = (torch.exp(lses - total) * outs).sum(0)  # rows no round saw: 0
    return out.to(q.dtype)


def _eager_backend() -> Backend:
    def build(problem: Problem, device: torch.device) -> Fn:
        rot = rotations(problem, device)
        return lambda q, k, v: reformer_attention(q, k, v, problem, rot)

    return Backend("eager", build, "hash, sort, chunked attention and merge in plain PyTorch, round by round",
                   workspace=reformer_workspace)


def reformer_workspace(p: Problem) -> float:
    """The merge's peak: every round's fp32 (B, Hq, Lq, D) output three times over (the list, the
    stack and the weighted copy), beside the fp32 keys-and-values tensor (B, Hq, Lk, 2D)."""
    rounds = int(p.param("n_hashes"))
    return 4.0 * (3 * rounds * p.batch * p.heads * p.seq_q * p.head_dim + 2 * p.batch * p.heads * p.seq_k * p.head_dim)


def reformer_flops(p: Problem) -> float:
    rounds, c = int(p.param("n_hashes")), int(p.param("bucket_size"))
    keys_seen = c if p.seq_k // c == 1 else 2 * c  # own chunk and the previous one
    hashing = 2.0 * p.batch * p.heads * (p.seq_q + p.seq_k) * p.head_dim * (n_buckets(p) // 2)  # x̂R
    attend = 4.0 * p.batch * p.heads * p.seq_q * keys_seen * p.head_dim  # QKᵀ and PV per chunk
    combine = 2.0 * p.batch * p.heads * p.seq_q * p.head_dim  # weighted sum per round
    return rounds * (hashing + attend + combine)  # the sort is O(L log L) comparisons, not FLOPs


def reformer_supports(p: Problem) -> Reason:
    c = int(p.param("bucket_size"))
    if p.mode == "decode" or p.seq_q != p.seq_k:
        return (f"reformer pairs chunks of sorted queries with chunks of sorted keys, so it needs "
                f"Lq == Lk (got {p.seq_q} and {p.seq_k}); decode is unsupported")
    if c < 1 or p.seq_k % c:
        return f"L={p.seq_k} must be a multiple of bucket_size={c}"
    if p.param("inputs") not in INPUTS:
        return f"unknown inputs '{p.param('inputs')}'; accepted: {', '.join(INPUTS)}"
    return check_heads(p)


def clustered_inputs(problem: Problem, device: torch.device, seed: int = 0, n_clusters: int | None = None):
    """q and k drawn around shared centres (q·k/√D ≈ 8 inside a cluster, ≈ 0 across), so exact
    attention stays inside a cluster; position i belongs to cluster i mod n_clusters, default
    2·L / bucket_size clusters (half a bucket each). v is standard normal."""
    g = torch.Generator().manual_seed(seed)
    b, d = problem.batch, problem.head_dim
    n = n_clusters or max(2, 2 * problem.seq_k // int(problem.param("bucket_size", 64)))
    centres = F.normalize(torch.randn(n, d, generator=g), dim=-1) * math.sqrt(8 * math.sqrt(d))

    def around(heads: int, length: int) -> torch.Tensor:
        which = torch.arange(length) % n
        noise = torch.randn(b, heads, length, d, generator=g) * 0.1
        return centres[which] + noise

    q, k = around(problem.heads, problem.seq_q), around(problem.kv_heads, problem.seq_k)
    v = torch.randn(b, problem.kv_heads, problem.seq_k, d, generator=g)
    return tuple(t.to(device=device, dtype=problem.torch_dtype) for t in (q, k, v))


def make_inputs(problem: Problem, device: torch.device, seed: int = 0):
    """inputs="random": standard normal (as for every variant); "clustered": see clustered_inputs."""
    if problem.param("inputs", "random") == "clustered":
        return clustered_inputs(problem, device, seed)
    g = torch.Generator().manual_seed(seed)
    shapes = [(problem.batch, h, n, problem.head_dim) for h, n in
              ((problem.heads, problem.seq_q), (problem.kv_heads, problem.seq_k), (problem.kv_heads, problem.seq_k))]
    return tuple(torch.randn(s, generator=g).to(device=device, dtype=problem.torch_dtype) for s in shapes)


REFORMER = Variant(
    name="reformer", family="lsh",
    description="Reformer LSH attention: hash, sort into buckets, attend within chunks, n_hashes rounds",
    time="O(L log L)", memory="O(L·c)", reference=exact_reference, flops=reformer_flops, bytes=io_bytes,
    backends=(_eager_backend(),), resolve=lambda p: fill_defaults(p, **DEFAULTS), why_unsupported=reformer_supports,
    oracle="eager", defaults=DEFAULTS, make_inputs=make_inputs)

VARIANTS = (REFORMER,)
