"""DeepSeek Sparse Attention (DSA; DeepSeek-V3.2-Exp, 2025): a lightning indexer picks, for each
query, the top-k cached tokens; MLA (variants/mla.py, absorbed form) attends only to those.
Variant `dsa`, family "dynamic sparse".

    indexer   I(i, j) = Σ_h w_{i,h} · ReLU(q^I_{i,h} · k^I_j)     over every cached token j ≤ i'
              (`index_heads` H_I × `index_head_dim` D_I, one key k^I_j per token, shared by the heads)
    select    S_i = top-`topk` of I(i, ·) (token positions; −1 where fewer than topk are visible)
    attend    MLA in the absorbed form over S_i only: s = [q_nope·W_UK | q_pe]·[c_KV | k_pe]ᵀ·scale,
              o = softmax(s)·c_KV·W_UVᵀ, scale = 1/√(dn + dr) (flashinfer's sm_scale = 1/√192)

Every head shares the query's selection (the indexer has its own heads). Decode: one query sees
the Lk cached tokens. fwd (prefill): Lq = Lk, causal (query i ranks keys j ≤ i).

Inputs (`make_inputs`): q (B, H, Lq, dn + dr) = [q_nope | q_pe] as mla.py; the cache per token is
[c_KV | k_pe | k^I] (r + dr + D_I): `kv_layout=dense` k (B, 1, Lk, r + dr + D_I), `paged` a pool
(P, page_size, r + dr + D_I) addressed by a shuffled block table (flashinfer's token slot =
page·page_size + offset; `sparse_indices` hold slots); v = the c_KV columns of k (a view). The
indexer queries q^I (B, Lq, H_I, D_I) and weights w (B, Lq, H_I) (projections of the hidden state
in the model; N(0, 1) and N(0, 1)·(H_I·D_I)^-½ here, as DeepSeek folds both scales into w) and
the MLA up-projections are drawn in setup from fixed seeds (INDEX_SEED, mla.WEIGHT_SEED) and
rounded to the problem's dtype. The indexer runs in float32 in every backend and in the
reference (one function, `select`), so every backend attends the same tokens; ties of the
selection are broken by torch.topk.

Backends
  eager   dense scores over all Lk tokens masked to the selection (materialised; the reference form)
  gather  the selected latent rows gathered per query (rows in blocks), then torch SDPA over them
  triton  attnbench.kernels.dsa_decode: split-k decode over the selected slots of the latent cache
          (decode only, Lq <= 16); the indexer and the two projections in torch

No flex backend: the selection changes with every call's inputs, so a BlockMask would be built
inside the timed call, and 2048 tokens chosen per query from anywhere in the cache leave almost no
128 × 128 tile empty: FlexAttention would compute the dense scores and mask them, as `eager` does.

Cost model, in two parts (`cost_parts`; the record's flops and bytes are their sum):
  indexer    FLOPs 2·B·P·H_I·(D_I + 1) over the P visible (query, key) pairs (the scores and the
             weighted sum); bytes: the indexer keys B·Lk·D_I, q^I and w, the indices written.
             O(L) per decoded token, O(L²) per prefill, with a small constant (D_I = 128 against
             MLA's 2r + dr = 1088 per pair and head).
  attention  mla.py's absorbed count over the selected pairs P_sel = Σ_i min(topk, visible_i):
             2·B·H·(Lq·r·(dn + dv) + P_sel·(2r + dr)); bytes: q, out, the up-projections, the
             indices and the selected latent rows (at most Lk distinct per sequence). Flat in L
             once L > topk.
`kv_cache_bytes` (what a decode step reads): every indexer key and the selected latent rows.
Honest limits: modes fwd and decode (no backward); the indexer keeps float32 keys, not FP8 with
scales as DeepSeek and flashinfer's indexer op do; `--inputs peaked` does not apply; the Triton
kernel is checked under TRITON_INTERPRET=1 and compiled for sm_80/sm_90, not run on a GPU here.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from attnbench.core.problem import Problem
from attnbench.variants import mla
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.scaling import with_scale
from attnbench.variants.shared import fill_defaults

DEFAULTS = {**{k: v for k, v in mla.DEFAULTS.items() if k != "form"}, "topk": 2048, "index_heads": 64,
            "index_head_dim": 128, "kv_layout": "dense", "page_size": 64}
KV_LAYOUTS = ("dense", "paged")
INDEX_SEED = 3200
ROW_BYTES = 64 * 2**20  # gather: rows per block so that one block's gathered latent rows stay under this


# ---------------------------------------------------------------- shapes and fixed inputs
def widths(p: Problem) -> tuple[int, int, int]:
    """(r, r + dr, r + dr + D_I): where c_KV, k_pe and the indexer key sit in a cache row."""
    r, dr = mla.dims(p)[:2]
    return r, r + dr, r + dr + int(p.param("index_head_dim"))


def block_table(p: Problem) -> torch.Tensor:
    """(B, pages per sequence) int64: the pages of each sequence, shuffled over the pool (seeded)."""
    ps = p.param("page_size")
    n = -(-p.seq_k // ps)
    order = list(range(p.batch * n))
    random.Random(0).shuffle(order)
    return torch.tensor(order, dtype=torch.int64).view(p.batch, n)


def token_slots(p: Problem, device) -> torch.Tensor:
    """(B, Lk) int64: the row of the flat cache holding token t of sequence b."""
    t = torch.arange(p.seq_k)
    if p.param("kv_layout") == "paged":
        ps = p.param("page_size")
        slots = block_table(p)[:, t // ps] * ps + t % ps
    else:
        slots = torch.arange(p.batch)[:, None] * p.seq_k + t
    return slots.to(device)


def index_inputs(p: Problem, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(q^I (B, Lq, H_I, D_I), w (B, Lq, H_I)) in float32, rounded to the problem's dtype first."""
    hi, di = int(p.param("index_heads")), int(p.param("index_head_dim"))
    g = torch.Generator(device="cpu").manual_seed(INDEX_SEED)
    qi = torch.randn(p.batch, p.seq_q, hi, di, generator=g)
    w = torch.randn(p.batch, p.seq_q, hi, generator=g) / math.sqrt(hi * di)
    return tuple(t.to(p.torch_dtype).to(device=device, dtype=torch.float32) for t in (qi, w))


def make_inputs(p: Problem, device: torch.device, seed: int = 0):
    """q (B, H, Lq, dn + dr); k the cache (dense (B, 1, Lk, W) or a pool (P, page_size, W)); v its c_KV."""
    r, _, width = widths(p)
    dr, dn = mla.dims(p)[1], mla.dims(p)[2]
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(p.batch, p.heads, p.seq_q, dn + dr, generator=g)
    k = torch.randn(p.batch, 1, p.seq_k, width, generator=g)
    if p.param("kv_layout") == "paged":
        ps, table = p.param("page_size"), block_table(p)
        pool = torch.randn(table.numel() * ps, width, generator=g)  # slack slots hold noise
        pool[token_slots(p, "cpu").flatten()] = k.reshape(-1, width)
        k = pool.view(table.numel(), ps, width)
    q, k = (t.to(device=device, dtype=p.torch_dtype) for t in (q, k))
    return q, k, k[..., :r]


def flat(k: torch.Tensor) -> torch.Tensor:
    """The cache as (slots, W) rows: a view of either layout."""
    return k.reshape(-1, k.shape[-1])


def columns(k: torch.Tensor, slots: torch.Tensor, lo: int, hi: int, p: Problem) -> torch.Tensor:
    """(B, Lk, hi − lo): columns lo:hi of every token of each sequence: a view of the dense cache,
    gathered through the block table from a paged one (only those columns are copied)."""
    if p.param("kv_layout") == "dense":
        return k[:, 0, :, lo:hi]
    return flat(k)[:, lo:hi][slots]


# ---------------------------------------------------------------- the indexer and the selection
def select(k: torch.Tensor, slots: torch.Tensor, qi: torch.Tensor, w: torch.Tensor, p: Problem) -> torch.Tensor:
    """Token positions (B, Lq, topk) int64 of the top-k indexer scores of each query, −1 where fewer
    are visible; float32 whatever the cache's dtype. Query rows go in blocks (scores B·R·H_I·Lk)."""
    _, start, _ = widths(p)
    keys = columns(k, slots, start, k.shape[-1], p).float()  # (B, Lk, D_I): the sequence's indexer keys
    b, lq, hi, di = qi.shape
    lk, top = keys.shape[1], int(p.param("topk"))
    kk = min(top, lk)
    out = torch.full((b, lq, top), -1, dtype=torch.int64, device=k.device)
    rows = max(1, (32 * 2**20) // (hi * lk * 4))
    j = torch.arange(lk, device=k.device)
    for r0 in range(0, lq, rows):
        r1 = min(lq, r0 + rows)
        s = torch.relu(qi[:, r0:r1].reshape(b, -1, di) @ keys.transpose(1, 2))  # (B, R·H_I, Lk)
        score = (w[:, r0:r1, None, :] @ s.view(b, r1 - r0, hi, lk)).squeeze(2)  # (B, R, Lk): Σ_h w_h·ReLU
        if p.mode != "decode" or p.seq_q > 1:  # bottom-right causal: query i ranks keys j <= i + Lk − Lq
            i = torch.arange(r0, r1, device=k.device) + (lk - lq)
            score = score.masked_fill(j[None, :] > i[:, None], float("-inf"))
        val, idx = score.topk(kk, dim=-1)
        out[:, r0:r1, :kk] = idx.masked_fill(val == float("-inf"), -1)
    return out


def selected_slots(pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Token positions (B, Lq, topk) -> flat-cache rows (−1 kept): flashinfer's sparse_indices."""
    rows = torch.gather(slots[:, None, :].expand(-1, pos.shape[1], -1), 2, pos.clamp(min=0))
    return rows.masked_fill(pos < 0, -1)


# ---------------------------------------------------------------- attention over the selection
def masked_dense(qa: torch.Tensor, k: torch.Tensor, slots: torch.Tensor, pos: torch.Tensor, p: Problem):
    """Latent output (B, H, Lq, r): dense absorbed scores over every token, masked to the selection.
    The heads are stacked as rows and the scores taken as lat·qaᵀ, so the cache rows are read in
    place (their stride is the full cache row, indexer key included)."""
    r, start, _ = widths(p)
    b, h, lq, width = qa.shape
    lat = columns(k, slots, 0, start, p)  # (B, Lk, r + dr), rows strided
    lk = lat.shape[1]
    allowed = torch.zeros(b, lq, lk + 1, dtype=torch.bool, device=qa.device)
    allowed.scatter_(2, torch.where(pos < 0, lk, pos), True)
    s = (lat @ qa.reshape(b, h * lq, width).transpose(1, 2)).transpose(1, 2)  # (B, H·Lq, Lk)
    s = s.reshape(b, h, lq, lk) * mla.scale(p)
    s = s.masked_fill(~allowed[:, None, :, :-1], float("-inf"))
    probs = torch.softmax(s if s.dtype == torch.float64 else s.float(), dim=-1).nan_to_num(0.0)
    return (probs.to(qa.dtype).reshape(b, h * lq, lk) @ lat[..., :r]).reshape(b, h, lq, r)


def gathered_sdpa(qa: torch.Tensor, k: torch.Tensor, sel: torch.Tensor, p: Problem) -> torch.Tensor:
    """Latent output (B, H, Lq, r): the selected rows gathered (query rows in blocks), then SDPA with
    the H heads of a query as the rows of one head over its own topk keys."""
    r, start, _ = widths(p)
    b, h, lq, _ = qa.shape
    top = sel.shape[-1]
    rows_per = max(1, ROW_BYTES // (b * top * start * qa.element_size()))
    rows = flat(k)[:, :start]
    out = torch.empty(b, lq, h, r, dtype=qa.dtype, device=qa.device)
    for r0 in range(0, lq, rows_per):
        r1 = min(lq, r0 + rows_per)
        s = sel[:, r0:r1]  # (B, R, topk)
        kv = rows[s.clamp(min=0)].reshape(-1, 1, top, start)  # (B·R, 1, topk, r + dr)
        qb = qa[:, :, r0:r1].transpose(1, 2).reshape(-1, 1, h, start)  # (B·R, 1, H, r + dr)
        mask = (s >= 0).reshape(-1, 1, 1, top)
        o = F.scaled_dot_product_attention(qb, kv, kv[..., :r], attn_mask=mask, scale=mla.scale(p))
        out[:, r0:r1] = o.reshape(b, r1 - r0, h, r)
    return out.transpose(1, 2)


def picture(p: Problem) -> torch.Tensor:
    """(Lq, Lk) 0/1: the tokens each query's indexer selects on the benchmark's inputs (seed 0)."""
    q, k, _ = make_inputs(p, torch.device("cpu"))
    slots = token_slots(p, "cpu")
    pos = select(k, slots, *index_inputs(p, "cpu"), p)[0]  # (Lq, topk), batch 0
    mask = torch.zeros(p.seq_q, p.seq_k + 1)
    return mask.scatter_(1, torch.where(pos < 0, p.seq_k, pos), 1.0)[:, :-1]


def reference(q, k, v, p: Problem) -> torch.Tensor:
    """The definition in the inputs' dtype (float64 for the oracle): the float32 selection, then the
    dense masked form."""
    slots = token_slots(p, q.device)
    qi, w = index_inputs(p, q.device)
    pos = select(k, slots, qi, w, p)
    w_uk, w_uv = mla.up_weights(p, q.device, q.dtype)
    return mla.expand_out(masked_dense(mla.absorb(q, w_uk, p), k, slots, pos, p), w_uv)


# ---------------------------------------------------------------- backends
def _builder(attend):
    """A backend: the indexer and selection, then `attend(qa, k, slots, pos, p)` -> latent output."""
    def build(p: Problem, device: torch.device) -> Fn:
        slots = token_slots(p, device)
        qi, w = index_inputs(p, device)
        w_uk, w_uv = mla.up_weights(p, device, p.torch_dtype)

        def dsa(q, k, v):
            with record_function("dsa.indexer"):
                pos = select(k, slots, qi, w, p)
            with record_function("dsa.attention"):
                return mla.expand_out(attend(mla.absorb(q, w_uk, p), k, slots, pos, p), w_uv)

        return dsa

    return build


def _triton_attend(qa, k, slots, pos, p: Problem):
    from attnbench.kernels.dsa_decode import dsa_decode

    r, start, _ = widths(p)
    sel = selected_slots(pos, slots).to(torch.int32)  # flashinfer's sparse_indices dtype
    return dsa_decode(qa, flat(k)[:, :start], sel, rank=r, softmax_scale=mla.scale(p))


def _triton_supports(p: Problem, device: torch.device) -> Reason:
    from attnbench.kernels.dsa_decode import MAX_QUERIES

    if p.mode != "decode" or p.seq_q > MAX_QUERIES:
        return f"the Triton DSA kernel is a decode kernel (Lq <= {MAX_QUERIES}); prefill runs on eager and gather"
    return None


def _backends() -> tuple[Backend, ...]:
    from attnbench.variants.backends import triton

    return (
        Backend("eager", _builder(masked_dense), "indexer, top-k, then dense absorbed scores over every token "
                "masked to the selection (materialised)", materializes=True),
        Backend("gather", _builder(lambda qa, k, slots, pos, p: gathered_sdpa(qa, k, selected_slots(pos, slots), p)),
                "indexer, top-k, the selected latent rows gathered per query, torch SDPA over them",
                time="O(L²·D_I + L·k)", memory="O(L·k)"),
        Backend("triton", _builder(_triton_attend), "indexer and top-k in torch, then attnbench's Triton "
                "split-k sparse decode over the selected latent slots (fp32: TF32 dots)",
                why_unavailable=triton.flash_backend().why_unavailable, why_unsupported=_triton_supports,
                tf32_dots=True),
    )


# ---------------------------------------------------------------- problem and cost model
def resolve(p: Problem) -> Problem:
    p = fill_defaults(p, **DEFAULTS)
    lq = 1 if p.mode == "decode" else p.seq_q
    lk = p.seq_k if p.mode == "decode" else lq
    return replace(p, kv_heads=1, head_dim=int(p.param("v_head_dim")), seq_q=lq, seq_k=lk, causal=True)


def supports(p: Problem) -> Reason:
    for name in (*mla.DIMS, "topk", "index_heads", "index_head_dim", "page_size"):
        value = p.param(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"bad {name} {value!r}; accepted: an integer >= 1"
    if p.param("kv_layout") not in KV_LAYOUTS:
        return f"bad kv_layout '{p.param('kv_layout')}'; accepted: {', '.join(KV_LAYOUTS)}"
    return None


def visible_pairs(p: Problem) -> int:
    """(query, key) pairs the indexer scores per sequence (bottom-right causal)."""
    return p.attended_pairs()


def selected_pairs(p: Problem) -> int:
    """Σ_i min(topk, visible_i) per sequence: the pairs the sparse attention computes."""
    top, off = int(p.param("topk")), p.seq_k - p.seq_q
    vis = torch.arange(p.seq_q, dtype=torch.int64) + off + 1  # query i sees i + off + 1 keys
    return int(vis.clamp(min=0, max=top).sum())


def cost_parts(p: Problem) -> dict[str, dict[str, float]]:
    """{"indexer": {flops, bytes}, "attention": {flops, bytes}} (the module docstring's model)."""
    r, dr, dn, dv = mla.dims(p)
    hi, di, top = int(p.param("index_heads")), int(p.param("index_head_dim")), int(p.param("topk"))
    b, h, lq, isz = p.batch, p.heads, p.seq_q, p.itemsize
    idx_flops = 2.0 * b * visible_pairs(p) * hi * (di + 1)
    idx_bytes = b * p.seq_k * di * isz + b * lq * hi * (di + 1) * 4 + b * lq * top * 8
    sel = selected_pairs(p)
    att_flops = 2.0 * b * h * (lq * r * (dn + dv) + sel * (2 * r + dr))
    rows = b * min(p.seq_k, sel) * (r + dr) * isz
    att_bytes = (b * h * lq * (dn + dr + dv) + h * (dn + dv) * r) * isz + rows + b * lq * top * 8
    return {"indexer": {"flops": idx_flops, "bytes": float(idx_bytes)},
            "attention": {"flops": att_flops, "bytes": float(att_bytes)}}


def kv_cache_bytes(p: Problem) -> float:
    """What one decode step reads of the cache: every indexer key and the selected latent rows."""
    r, dr = mla.dims(p)[:2]
    return float(p.batch * (p.seq_k * int(p.param("index_head_dim")) + min(p.seq_k, int(p.param("topk"))) * (r + dr))
                 * p.itemsize)


DSA = with_scale(Variant(
    name="dsa", family="dynamic sparse", oracle="reference", decode_check=True,
    description="DeepSeek Sparse Attention (V3.2): lightning indexer + top-k tokens of the MLA latent cache "
                "(absorbed); --param topk=, kv_layout=dense|paged",
    time="O(L²·D_I + L·k)", memory="O(L²)", reference=reference,
    flops=lambda p: sum(part["flops"] for part in cost_parts(p).values()),
    bytes=lambda p: sum(part["bytes"] for part in cost_parts(p).values()),
    backends=_backends(), resolve=resolve, why_unsupported=supports, defaults=dict(DEFAULTS), make_inputs=make_inputs,
    modes=("fwd", "decode"), kv_cache_bytes=kv_cache_bytes, cost_parts=cost_parts,
    picture=picture), mla.scale)  # a model's own softmax scale (DeepSeek-V3.2's YaRN mscale²): `scale`

VARIANTS = (DSA,)
