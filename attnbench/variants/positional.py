"""Positional variants: exact attention with relative-position information.

| variant        | what it adds                                                       | paper               |
|----------------|--------------------------------------------------------------------|---------------------|
| rope           | rotates q and k by position-dependent angles before QKᵀ            | Su et al. 2021      |
| alibi          | bias −slope_h·|i' − j| on the scores, geometric per-head slopes    | Press et al. 2022   |
| t5_bias        | learned per-head bias per log-spaced relative-distance bucket      | Raffel et al. 2020  |
| transformer_xl | memory of previous states + content/position terms with u, v biases| Dai et al. 2019     |

Positions: query i sits at i' = i + (Lk − Lq), key j at j (bottom-right, as causal masks and
decoding). All four are exact w.r.t. their own eager reference (oracle "reference"). The scores keep the
1/√D scaling; biases are added after it (T5 itself folds the scaling into its initialisation).

RoPE (rotate-half convention of GPT-NeoX/Llama; the paper's interleaved pairs are a permutation
of the dimensions): θ_m = base^(−2m/D); x = (x₁, x₂) halves; rot(x) = (x₁cos − x₂sin, x₁sin + x₂cos)
at angle pos·θ_m, so rot(q_i)·rot(k_j) depends on i' − j only. Backends build the cos/sin tables
in setup and rotate inside the timed call (its 3·D FLOPs per vector counted).

ALiBi slopes: for H a power of two, 2^(−8/H·(h+1)), h = 0..H−1; otherwise the paper's rule: the
slopes of the closest power of two M < H, then every other slope of 2M for the remaining heads.

T5: rel = j − i' goes to one of `num_buckets` buckets: half for each sign when bidirectional
(non-causal), exact buckets for |rel| < num_buckets/4 (/2 one-directional), log-spaced buckets up
to `max_distance`, beyond it the last bucket. The bias table (buckets, H) is drawn from a seeded
generator (a stand-in for learned values).

Transformer-XL: keys/values are [memory of `mem_len` previous-segment states ; current segment],
so Lk = Lq + mem_len. Per head, with R_d the sinusoid of relative distance d = i' − j projected by
W_r (D×D) and global biases u, v (D):
    score(i, j) = (q_i·k_j  +  q_i·W_rR_d  +  u·k_j  +  v·W_rR_d) / √D
                = ((q_i + u)·k_j  +  (q_i + v)·W_rR_d) / √D
The position term is computed for every (query, distance) pair as one matmul (Lq × P), then the
*relative shift* re-indexes it to (Lq × Lk): pad a zero column on the left, view the (Lq, P+1)
buffer as (P+1, Lq), drop its first row and view the rest as (Lq, P): row i is shifted left by
Lq−1−i, so column j holds distance i' − j. W_r, u, v are drawn from a seeded generator.

Honest limits: no flex backend for transformer_xl (score_mod cannot compute q·R per pair, it
would read a materialised Lq×P tensor); its `chunked` backend has O(L·chunk) memory, O(L²) time.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from attnbench.core.problem import Problem
from attnbench.variants.backends import triton
from attnbench.variants.backends.flex import flex_backend
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.patterns import causal_mask, positions
from attnbench.variants.shared import (
    attention_flops,
    check_heads,
    eager_backend,
    fill_defaults,
    io_bytes,
    sdpa_backends,
    softmax_attention,
)


def _even_head_dim(p: Problem) -> Reason:
    return check_heads(p) or (None if p.head_dim % 2 == 0 else f"needs an even head_dim (got {p.head_dim})")


def _masked_picture(bias: torch.Tensor, p: Problem) -> torch.Tensor:
    """Bias values where attended, NaN where the causal mask hides the pair."""
    return bias.masked_fill(~causal_mask(p.seq_q, p.seq_k), float("nan")) if p.causal else bias


# ================================================================ RoPE


def rope_tables(lq: int, lk: int, d: int, base: float, device=None, dtype=torch.float32):
    """cos/sin of pos·θ_m, θ_m = base^(−2m/D): ((Lq, D/2), (Lq, D/2)) for queries at i', and the
    same (Lk, D/2) for keys."""
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (D/2,)
    qpos, kpos = positions(lq, lk)
    ang_q, ang_k = qpos.double() * theta, kpos.T.double() * theta  # (Lq, D/2), (Lk, D/2)
    return tuple(t.to(device=device, dtype=dtype) for t in (ang_q.cos(), ang_q.sin(), ang_k.cos(), ang_k.sin()))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) rotated pairwise (x₁[m], x₂[m]) by the angles of cos/sin (L, D/2):
    4 multiplies + 2 adds = 6 FLOPs per pair, 3·D per vector."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def rope_attention(q, k, v, p: Problem) -> torch.Tensor:
    """Reference: rotate q and k by their positions, then exact softmax attention."""
    cq, sq, ck, sk = rope_tables(q.shape[-2], k.shape[-2], q.shape[-1], p.param("base"), q.device, q.dtype)
    return softmax_attention(rotate(q, cq, sq), rotate(k, ck, sk), v, causal=p.causal)


def _rotated(inner: Backend) -> Backend:
    """`inner` (plain exact attention) fed with rotated q and k; the tables are built in setup."""

    def build(problem: Problem, device: torch.device) -> Fn:
        attend = inner.build(problem, device)
        cq, sq, ck, sk = rope_tables(problem.seq_q, problem.seq_k, problem.head_dim, problem.param("base"),
                                     device, problem.torch_dtype)

        def rope(q, k, v):
            return attend(rotate(q, cq, sq), rotate(k, ck, sk), v)

        return rope

    def workspace(p: Problem) -> float:  # the rotated q and k, then the inner backend's own
        rotated = (p.batch * p.heads * p.seq_q + p.batch * p.kv_heads * p.seq_k) * p.head_dim * p.itemsize
        return rotated + (inner.workspace(p) if inner.workspace else 0.0)

    return replace(inner, build=build, description=f"rotate q, k, then {inner.description}", workspace=workspace)


def rope_flops(p: Problem) -> float:
    # attention on rotated q, k  +  rotation: 3·D FLOPs per q and k vector
    return attention_flops(p) + 3.0 * p.batch * p.head_dim * (p.heads * p.seq_q + p.kv_heads * p.seq_k)


def rope_bytes(p: Problem) -> float:
    # q, k, v, out  +  the cos and sin tables of queries and keys: (Lq + Lk)·D/2 each
    return io_bytes(p) + float((p.seq_q + p.seq_k) * p.head_dim * p.itemsize)


def _rope_picture(p: Problem) -> torch.Tensor:
    """rot(1)·rot(1)/D over (i', j): the relative-position kernel Σ cos((i'−j)θ_m) / (D/2)."""
    cq, sq, ck, sk = rope_tables(p.seq_q, p.seq_k, p.head_dim, p.param("base"))
    ones_q, ones_k = torch.ones(p.seq_q, p.head_dim), torch.ones(p.seq_k, p.head_dim)
    return _masked_picture(rotate(ones_q, cq, sq) @ rotate(ones_k, ck, sk).T / p.head_dim, p)


ROPE = Variant(
    name="rope", family="positional", oracle="reference",
    description="rotary position embedding on q and k (base 10000), then exact attention",
    time="O(L²)", memory="O(L²)", reference=rope_attention, flops=rope_flops, bytes=rope_bytes,
    backends=tuple(_rotated(b) for b in (
        eager_backend(lambda q, k, v, p: softmax_attention(q, k, v, causal=p.causal)),
        *sdpa_backends(names=("sdpa",)), flex_backend())),
    resolve=lambda p: fill_defaults(p, base=10000.0), why_unsupported=_even_head_dim,
    defaults={"base": 10000.0}, picture=_rope_picture)


# ================================================================ additive biases: ALiBi, T5


def alibi_slopes(heads: int) -> torch.Tensor:
    """(H,) slopes of Press et al. 2022."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    m = 2 ** int(math.floor(math.log2(heads)))
    slopes = power_of_two(m) + power_of_two(2 * m)[0::2][:heads - m]
    return torch.tensor(slopes, dtype=torch.float64)


def alibi_bias(p: Problem, device=None) -> torch.Tensor:
    """(Hq, Lq, Lk) float32: −slope_h·|i' − j| (causal: −slope_h·(i' − j) where visible)."""
    qpos, kpos = positions(p.seq_q, p.seq_k, device)
    dist = (qpos - kpos).abs().double()  # (Lq, Lk)
    return (-alibi_slopes(p.heads).to(device)[:, None, None] * dist).float()


def alibi_score_mod(p: Problem, device: torch.device):
    slopes = alibi_slopes(p.heads).to(device=device, dtype=torch.float32)
    offset = p.seq_k - p.seq_q

    def alibi(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx + offset - kv_idx).abs()

    return alibi


def t5_buckets(rel: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of each relative position rel = j − i' (T5's relative_position_bucket)."""
    if bidirectional:
        num_buckets //= 2
        offset = (rel > 0).long() * num_buckets  # keys after the query use the upper half
        n = rel.abs()
    else:
        offset = torch.zeros_like(rel)
        n = (-rel).clamp(min=0)  # only the past is distinguished
    exact = num_buckets // 2  # distances 0..exact−1 get one bucket each
    far = n.clamp(min=exact).float() / exact  # >= 1; float32 as T5's own implementation
    log_bucket = exact + (far.log() / math.log(max_distance / exact) * (num_buckets - exact)).long()
    return offset + torch.where(n < exact, n, log_bucket.clamp(max=num_buckets - 1))


def t5_table(p: Problem) -> torch.Tensor:
    """(num_buckets, Hq) 'learned' bias values, drawn from torch.Generator().manual_seed(seed)."""
    g = torch.Generator().manual_seed(p.param("seed"))
    return torch.randn(p.param("num_buckets"), p.heads, generator=g)


def _t5_rel_bias(p: Problem, device=None) -> torch.Tensor:
    """(Hq, Lq + Lk − 1) bias by relative position rel = j − i' ∈ [−(Lk−1), Lq−1], index rel + Lk − 1."""
    rel = torch.arange(-(p.seq_k - 1), p.seq_q)
    buckets = t5_buckets(rel, not p.causal, p.param("num_buckets"), p.param("max_distance"))
    return t5_table(p)[buckets].T.contiguous().to(device)


def t5_bias(p: Problem, device=None) -> torch.Tensor:
    """(Hq, Lq, Lk) float32: table[bucket(j − i'), h]."""
    qpos, kpos = positions(p.seq_q, p.seq_k)
    return _t5_rel_bias(p)[:, kpos - qpos + p.seq_k - 1].to(device)


def t5_score_mod(p: Problem, device: torch.device):
    rel_bias = _t5_rel_bias(p, device)
    offset = p.seq_k - p.seq_q

    def t5(score, b, h, q_idx, kv_idx):
        return score + rel_bias[h, kv_idx - q_idx - offset + p.seq_k - 1]

    return t5


def _bias_variant(name: str, description: str, bias_fn, score_mod, defaults: dict, why_unsupported=check_heads,
                  extra: tuple[Backend, ...] = ()) -> Variant:
    """Exact attention plus an additive (Hq, Lq, Lk) bias: eager, SDPA with the bias as a float
    attn_mask (causal folded in as −inf), flex with a score_mod computing the bias per pair."""

    def reference(q, k, v, p: Problem):
        return softmax_attention(q, k, v, bias=bias_fn(p, q.device).to(q.dtype), causal=p.causal)

    def eager_build(p: Problem, device: torch.device) -> Fn:
        bias = bias_fn(p, device).to(p.torch_dtype)  # built in setup

        def eager(q, k, v):
            return softmax_attention(q, k, v, bias=bias, causal=p.causal)

        return eager

    def sdpa_mask(p: Problem, device) -> torch.Tensor:
        bias = bias_fn(p, device)
        if p.causal:
            bias = bias.masked_fill(~causal_mask(p.seq_q, p.seq_k, device), float("-inf"))
        return bias[None].to(p.torch_dtype)  # (1, Hq, Lq, Lk)

    return Variant(
        name=name, family="positional", oracle="reference", description=description, time="O(L²)", memory="O(L²)",
        reference=reference, flops=attention_flops,
        # q, k, v, out; the bias is computed (flex) or read once per head (sdpa: + Hq·Lq·Lk)
        bytes=io_bytes,
        backends=(Backend("eager", eager_build, "materialised softmax(QKᵀ/√D + bias)V", materializes=True),
                  *sdpa_backends(sdpa_mask, names=("sdpa",), bool_mask=False), flex_backend(score_mod=score_mod),
                  *extra),
        resolve=lambda p: fill_defaults(p, **defaults), why_unsupported=why_unsupported, defaults=dict(defaults),
        picture=lambda p: _masked_picture(bias_fn(p)[0], p))


def _t5_supports(p: Problem) -> Reason:
    nb, md = p.param("num_buckets"), p.param("max_distance")
    if not isinstance(nb, int) or nb < 4 or nb % 2:
        return f"num_buckets must be an even integer >= 4 (got {nb!r})"
    if not isinstance(md, int) or md <= nb // 2:
        return f"max_distance must exceed num_buckets/2 (got {md!r})"
    return check_heads(p)


ALIBI = _bias_variant("alibi", "ALiBi: linear distance penalty −slope_h·|i'−j| with geometric per-head slopes",
                      alibi_bias, alibi_score_mod, {}, extra=(triton.alibi_backend(alibi_slopes),))
T5_BIAS = _bias_variant("t5_bias", "T5 relative position bias: per-head bias per log-spaced distance bucket "
                        "(32 buckets, max distance 128)", t5_bias, t5_score_mod,
                        {"num_buckets": 32, "max_distance": 128, "seed": 0}, _t5_supports)


# ================================================================ Transformer-XL


def sinusoid(dist: torch.Tensor, d: int) -> torch.Tensor:
    """(P,) distances -> (P, D) [sin(d·f_m), cos(d·f_m)], f_m = 10000^(−2m/D) (Vaswani et al.)."""
    freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (D/2,)
    ang = dist.double()[:, None] * freq
    return torch.cat([ang.sin(), ang.cos()], dim=-1).float()


def xl_weights(p: Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """'Learned' W_r (Hq, D, D), u (Hq, D), v (Hq, D) from torch.Generator().manual_seed(seed)."""
    g = torch.Generator().manual_seed(p.param("seed"))
    w_r = torch.randn(p.heads, p.head_dim, p.head_dim, generator=g) / math.sqrt(p.head_dim)
    return w_r, torch.randn(p.heads, p.head_dim, generator=g), torch.randn(p.heads, p.head_dim, generator=g)


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """(…, Lq, P) scores by distance (column c = distance d_max − c) -> (…, Lq, P) with row i
    shifted left by Lq − 1 − i, so column j holds distance d_max − (Lq − 1) + i − j."""
    *batch, lq, p = x.shape
    padded = F.pad(x, (1, 0))  # (…, Lq, P + 1): a zero column on the left
    return padded.view(*batch, p + 1, lq)[..., 1:, :].reshape(*batch, lq, p)


def xl_attention(q, k, v, problem: Problem) -> torch.Tensor:
    """Reference: content and position terms, the position term re-indexed by rel_shift."""
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    w_r, u, vb = (t.to(q.device, q.dtype) for t in xl_weights(problem))
    # distances i' − j, descending from Lk − 1; only i' − j >= 0 is visible when causal
    dist = torch.arange(lk - 1, -1 if problem.causal else -lq, -1, device=q.device)  # (P,)
    r = sinusoid(dist, d).to(q.device, q.dtype) @ w_r  # (Hq, P, D) = W_r R_d per head
    bd = (q + vb[:, None]) @ r.transpose(-2, -1)  # (B, Hq, Lq, P): (q_i + v)·W_rR_d
    bd = rel_shift(bd)[..., :lk]  # (B, Hq, Lq, Lk): distance i' − j (garbage only where causal hides)
    scale = 1.0 / math.sqrt(d)
    return softmax_attention(q + u[:, None], k, v, bias=bd * scale, causal=problem.causal, scale=scale)


def xl_chunked(q, k, v, r_all, u, vb, causal: bool, chunk: int) -> torch.Tensor:
    """Query chunks of `chunk` rows: each builds its (chunk, Lk) position bias from the distances
    it needs and runs fused SDPA on (q + u, k, v): memory O(B·H·chunk·Lk), never Lq×Lk.

    r_all: (Hq, Lq + Lk − 1, D) projected sinusoids for distances Lk − 1 down to 1 − Lq."""
    lq, lk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale, outs = 1.0 / math.sqrt(d), []
    for a in range(0, lq, chunk):
        n = min(chunk, lq - a)
        qa = q[:, :, a:a + n]  # (B, Hq, n, D)
        r = r_all[:, lq - a - n: lq - a + lk - 1]  # distances from i'_last down to i'_first − (Lk − 1)
        bias = rel_shift((qa + vb[:, None]) @ r.transpose(-2, -1))[..., :lk] * scale  # (B, Hq, n, Lk)
        if causal:  # rows i' = a + i + Lk − Lq see j <= i'
            qpos = torch.arange(a, a + n, device=q.device)[:, None] + (lk - lq)
            bias = bias.masked_fill(torch.arange(lk, device=q.device) > qpos, float("-inf"))
        outs.append(F.scaled_dot_product_attention(qa + u[:, None], k, v, attn_mask=bias,
                                                   enable_gqa=q.shape[1] != k.shape[1]))
    return torch.cat(outs, dim=2)


def _xl_backend(name: str, chunk: int | None, description: str) -> Backend:
    def build(p: Problem, device: torch.device) -> Fn:
        w_r, u, vb = (t.to(device, p.torch_dtype) for t in xl_weights(p))
        dist = torch.arange(p.seq_k - 1, -p.seq_q, -1)
        table = sinusoid(dist, p.head_dim).to(device, p.torch_dtype)  # (Lq + Lk − 1, D), setup

        def xl(q, k, v):
            r_all = table @ w_r  # (Hq, P, D): the projection is part of each forward, as in the paper
            return xl_chunked(q, k, v, r_all, u, vb, p.causal, chunk or p.seq_q)

        return xl

    return Backend(name, build, description, materializes=chunk is None, memory=None if chunk is None else "O(L·c)",
                   workspace=xl_bias_workspace if chunk is None else lambda p: xl_chunk_workspace(p, chunk))


def xl_bias_workspace(p: Problem) -> float:
    """Beyond the materialised scores: the (B, Hq, Lq, P) position-bias product, P = Lq + Lk − 1."""
    return 4.0 * p.batch * p.heads * p.seq_q * (p.seq_q + p.seq_k - 1)


def xl_chunk_workspace(p: Problem, chunk: int) -> float:
    """xl_chunked's call: the projected sinusoids (Hq, P, D), P = Lq + Lk − 1 distances; one
    (B, Hq, chunk, P) position-bias product at a time (its shift and slice are views; measured on
    the CPU at L = 512-1024: about one such tensor, not three); the chunks' outputs and their
    concatenation."""
    n_dist = p.seq_q + p.seq_k - 1
    rows = p.batch * p.heads * min(chunk, p.seq_q)
    q_size = p.batch * p.heads * p.seq_q * p.head_dim * p.itemsize
    return 4.0 * rows * n_dist + p.heads * n_dist * p.head_dim * p.itemsize + 2.0 * q_size


def xl_flops(p: Problem) -> float:
    pairs = p.attended_pairs()
    n_dist = p.seq_k if p.causal else p.seq_k + p.seq_q - 1  # distinct distances i' − j needed
    # (q+u)·k and P·V: 4·D per attended pair; (q+v)·W_rR_{i'−j}: 2·D per attended pair;
    # projecting the sinusoids: 2·D² per distance and head
    return 6.0 * p.batch * p.heads * p.head_dim * pairs + 2.0 * p.heads * n_dist * p.head_dim ** 2


def _xl_resolve(p: Problem) -> Problem:
    mem = p.param("mem_len", 512)
    if p.seq_k == 0:
        p = replace(p, seq_k=p.seq_q + mem)
    elif p.seq_k >= p.seq_q:  # an explicit --kv-seq (or decode's cache length) sets the memory
        mem = p.seq_k - p.seq_q
    return fill_defaults(p, seed=0).with_params(mem_len=mem)


def _xl_supports(p: Problem) -> Reason:
    if p.seq_k < p.seq_q:
        return f"keys are [memory ; segment], so seq_k >= seq_q (got {p.seq_k} < {p.seq_q})"
    return _even_head_dim(p)


def _xl_picture(p: Problem) -> torch.Tensor:
    """Head 0's query-independent position term v·W_rR_{i'−j} / √D."""
    w_r, _, vb = xl_weights(p)
    qpos, kpos = positions(p.seq_q, p.seq_k)
    r = sinusoid((qpos - kpos).flatten(), p.head_dim) @ w_r[0]  # (Lq·Lk, D)
    return _masked_picture((r @ vb[0]).view(p.seq_q, p.seq_k) / math.sqrt(p.head_dim), p)


TRANSFORMER_XL = Variant(
    name="transformer_xl", family="positional", oracle="reference",
    description="Transformer-XL relative attention over [memory ; segment] (mem_len 512), u/v biases",
    time="O(L·(L+m))", memory="O(L·(L+m))", reference=xl_attention, flops=xl_flops,
    bytes=lambda p: io_bytes(p) + float((p.seq_q + p.seq_k) * p.head_dim * p.itemsize),  # + the sinusoid table
    backends=(replace(eager_backend(xl_attention, "materialised scores, relative shift (the reference)"),
                      workspace=xl_bias_workspace),
              _xl_backend("sdpa", None, "position bias for all Lq×Lk pairs, then fused SDPA"),
              _xl_backend("chunked", 256, "256-query chunks: position bias chunk by chunk + fused SDPA; "
                          "O(L·256) memory")),
    resolve=_xl_resolve, why_unsupported=_xl_supports, defaults={"mem_len": 512, "seed": 0},
    picture=_xl_picture)

VARIANTS = (ROPE, ALIBI, T5_BIAS, TRANSFORMER_XL)
