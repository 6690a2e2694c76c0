"""Mixed batches of the `paged` variant (parameter `batch_spec`, core/batch_spec.py): prefill
chunks and decodes in one call, each request attending causally its own KV (bottom-right).

Layout: the queries are packed, q (1, Hq, ΣQ, D) — request b's Q_b rows follow request b−1's, as
vLLM's and FlashInfer's varlen kernels take them; K and V are the paged variant's (a pool of pages
with a block table, or the padded (B, Hkv, max S, D) cache). The output is packed like q.

Backends (built by variants/paged.py for a problem with a batch_spec):
    eager   one request at a time, exact materialised attention over its gathered pages (the oracle's
            method: the reference is the same code in fp64)
    sdpa    the padded way: q scattered into (B, Hq, max Q, D), the pages gathered into the padded
            cache, one SDPA call with a (B, 1, max Q, max S) mask, the real rows gathered back, all
            inside the timed call. It computes the whole rectangle: `padding_frac` of it is waste
    flex    FlexAttention over the packed queries and the pool seen as one flat sequence: a
            document-style BlockMask (request of each query row, owner of each page) lists for
            each 128-row query block the pages of the requests in it; nothing padded is visited
    triton  the paged decode kernel, for decode-only specs (every Q = 1): q (1, Hq, B, D) read as
            (B, Hq, 1, D) without a copy. A prefill row is beyond it (unsupported, with the reason)

Honest limits: flex needs kv_layout=paged here (the padded cache is not one flat sequence without
a copy); the BlockMask is built in Python per (query block, request), fine for hundreds of
requests, slow for tens of thousands. Not run on a GPU.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F

from attnbench.core.batch_spec import BatchSpec, of_problem
from attnbench.core.errors import UsageError
from attnbench.core.problem import Problem
from attnbench.variants.base import Fn, Reason
from attnbench.variants.shared import fill_defaults, softmax_attention

KvOf = Callable[[torch.Tensor, int, int], torch.Tensor]  # (kv, request b, its length) -> (Hkv, S_b, D)


def spec(p: Problem) -> BatchSpec:
    s = of_problem(p)
    assert s is not None, "a mixed-batch function called for a problem without batch_spec"
    return s


def resolve(p: Problem, defaults: dict) -> Problem:
    """A mixed batch's problem: B requests, seq_q = max Q, seq_k = max S (the padded dimensions),
    causal per request, Hkv = Hq/4 by default like the variant; no seq_dist (the spec gives the lengths)."""
    s = spec(p)
    if p.mode != "fwd":
        raise UsageError(f"a batch spec is one forward call (prefill chunks and decodes together); mode fwd "
                         f"only (got {p.mode})")
    p = fill_defaults(p, kv_heads=max(1, p.heads // 4), **defaults)
    params = tuple((k, x) for k, x in p.params if k != "seq_dist")
    return replace(p, batch=s.batch, seq_q=max(s.q_lens), seq_k=max(s.kv_lens), causal=True, params=params)


def row_starts(s: BatchSpec) -> list[int]:
    """The first packed query row of each request."""
    out, at = [], 0
    for q in s.q_lens:
        out.append(at)
        at += q
    return out


def make_q(p: Problem, g: torch.Generator) -> torch.Tensor:
    """q (1, Hq, ΣQ, D), seeded."""
    return torch.randn(1, p.heads, sum(spec(p).q_lens), p.head_dim, generator=g)


def check_q(q: torch.Tensor, p: Problem) -> None:
    """q is packed (a cheap check: --inputs peaked builds padded (B, Hq, Lq, D) queries)."""
    want = (1, p.heads, sum(spec(p).q_lens), p.head_dim)
    if tuple(q.shape) != want:
        raise ValueError(f"a mixed batch takes packed queries of shape {want}; got {tuple(q.shape)} (--inputs "
                         "peaked builds padded ones: use --inputs randn with --batch-spec)")


def attention(q, k, v, p: Problem, kv_of: KvOf) -> torch.Tensor:
    """Each request's rows attend its own keys, bottom-right causal, materialised; packed in and out."""
    check_q(q, p)
    s = spec(p)
    out = torch.empty_like(q)
    for b, (start, (ql, sl)) in enumerate(zip(row_starts(s), s.requests)):
        kb, vb = (kv_of(t, b, sl)[None] for t in (k, v))
        out[:, :, start:start + ql] = softmax_attention(q[:, :, start:start + ql], kb, vb, causal=True)
    return out


# ---------------------------------------------------------------- cost models (real tokens only)
def flops(p: Problem) -> float:
    """4·Hq·D per attended pair (QKᵀ and PV), the pairs of every request, never the padding."""
    return 4.0 * p.heads * p.head_dim * spec(p).pairs()


def io_bytes(p: Problem) -> float:
    """ΣQ query rows read and written, and the real tokens' K and V (ΣS); no page slack, no padding."""
    s = spec(p)
    rows = 2.0 * p.heads * p.head_dim * sum(s.q_lens)
    return (rows + 2.0 * p.kv_heads * p.head_dim * sum(s.kv_lens)) * p.itemsize


def sdpa_workspace(p: Problem) -> float:
    """The padded call's own tensors: q and out padded (B, Hq, max Q, D), the mask (B, max Q, max S)
    made additive, and with the paged layout the gathered padded K and V."""
    gathered = 2 * p.batch * p.kv_heads * p.seq_k * p.head_dim if p.param("kv_layout") == "paged" else 0
    padded_rows = 2 * p.batch * p.heads * p.seq_q * p.head_dim
    return float((p.batch * p.seq_q * p.seq_k + gathered + padded_rows) * p.itemsize)


# ---------------------------------------------------------------- backends
def sdpa_build(p: Problem, device: torch.device, table: torch.Tensor) -> Fn:
    s = spec(p)
    b, lq, lk, hq, d = p.batch, p.seq_q, p.seq_k, p.heads, p.head_dim
    ql = torch.tensor(s.q_lens, device=device)[:, None, None]
    sl = torch.tensor(s.kv_lens, device=device)[:, None, None]
    i, j = torch.arange(lq, device=device)[None, :, None], torch.arange(lk, device=device)[None, None, :]
    # a real row sees its causal prefix; a padded row (i >= Q_b) sees its request's keys (no NaN), then is dropped
    mask = torch.where(i < ql, j <= sl - ql + i, j < sl)[:, None]  # (B, 1, max Q, max S)
    rows = torch.cat([torch.arange(q, device=device) + r * lq for r, q in enumerate(s.q_lens)])
    flat = table.to(device).long().flatten()
    paged, gqa = p.param("kv_layout") == "paged", p.groups > 1

    def sdpa_padded(q, k, v):
        check_q(q, p)
        if paged:  # the pages gathered into the padded cache: SDPA has no block table
            k, v = (t.index_select(0, flat).reshape(b, -1, p.kv_heads, d)[:, :lk].transpose(1, 2) for t in (k, v))
        qp = q.new_zeros(b * lq, hq, d).index_copy_(0, rows, q[0].transpose(0, 1))
        out = F.scaled_dot_product_attention(qp.view(b, lq, hq, d).transpose(1, 2), k, v, attn_mask=mask,
                                             enable_gqa=gqa)
        return out.transpose(1, 2).reshape(b * lq, hq, d).index_select(0, rows).transpose(0, 1)[None]

    return sdpa_padded


def flex_why_unsupported(p: Problem) -> Reason:
    if p.param("kv_layout") != "paged":
        return ("flex runs a mixed batch over the paged pool seen as one flat sequence; the padded cache would "
                "need a copy: use kv_layout=paged")
    return None


def block_lists(s: BatchSpec, table: torch.Tensor, page: int, q_block: int):
    """For each query block of the packed rows: (partial pages, full pages), physical indices.
    A page of request b is visible to the block if some row of b in the block sees a key of it,
    full if the block is all b's rows and every one of them sees every key of the page."""
    total, starts = sum(s.q_lens), row_starts(s)
    partial, full = [], []
    for r0 in range(0, total, q_block):
        r1 = min(r0 + q_block, total)
        part, whole = [], []
        for b, (start, (ql, sl)) in enumerate(zip(starts, s.requests)):
            a, c = max(r0, start), min(r1, start + ql)
            if a >= c:
                continue
            lo, hi = sl - ql + (a - start), sl - ql + (c - 1 - start)  # positions of its first and last row
            alone = a == r0 and c == r0 + q_block
            for jp in range(hi // page + 1):
                ((whole if alone and (jp + 1) * page - 1 <= lo else part)).append(int(table[b, jp]))
        partial.append(part)
        full.append(whole)
    return partial, full


def _packed(lists: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    num = torch.tensor([len(x) for x in lists], dtype=torch.int32)
    idx = torch.zeros(len(lists), width, dtype=torch.int32)
    for r, x in enumerate(lists):
        idx[r, :len(x)] = torch.tensor(x, dtype=torch.int32)
    return num[None, None].contiguous(), idx[None, None].contiguous()


def flex_block_mask(p: Problem, table: torch.Tensor, pool_pages: int, device: torch.device):
    """The document-style BlockMask of the packed batch over the flat pool (block = page)."""
    from torch.nn.attention.flex_attention import BlockMask

    from attnbench.variants.paged_flex import Q_BLOCK

    s, page = spec(p), p.param("page_size")
    partial, full = block_lists(s, table, page, Q_BLOCK)
    (kv_num, kv_idx), (full_num, full_idx) = _packed(partial, pool_pages), _packed(full, pool_pages)
    req = torch.cat([torch.full((q,), b) for b, q in enumerate(s.q_lens)]).to(device)
    pos = torch.cat([torch.arange(sl - ql, sl) for ql, sl in s.requests]).to(device)
    owner = torch.full((pool_pages,), -1, dtype=torch.long)
    logical = torch.zeros(pool_pages, dtype=torch.long)
    for b, sl in enumerate(s.kv_lens):
        pages = table[b, : -(-sl // page)].long()
        owner[pages], logical[pages] = b, torch.arange(len(pages))
    owner, logical = owner.to(device), logical.to(device)

    def mixed(b, h, q_idx, kv_idx):  # the key's request is the query's, and it is not in the query's future
        pg = kv_idx // page
        return (owner[pg] == req[q_idx]) & (logical[pg] * page + kv_idx % page <= pos[q_idx])

    return BlockMask.from_kv_blocks(kv_num.to(device), kv_idx.to(device), full_num.to(device),
                                    full_idx.to(device), BLOCK_SIZE=(Q_BLOCK, page), mask_mod=mixed,
                                    seq_lengths=(sum(s.q_lens), pool_pages * page))


def flex_build(p: Problem, device: torch.device, table: torch.Tensor, pool_pages: int) -> Fn:
    from attnbench.variants.backends.flex import compiled_flex

    mask = flex_block_mask(p, table, pool_pages, device)
    attend, gqa = compiled_flex(), p.groups > 1
    flat = (1, pool_pages * p.param("page_size"), p.kv_heads, p.head_dim)

    def flex_mixed(q, k, v):
        check_q(q, p)
        return attend(q, k.view(flat).transpose(1, 2), v.view(flat).transpose(1, 2), block_mask=mask,
                      enable_gqa=gqa)

    return flex_mixed


def triton_why_unsupported(p: Problem) -> Reason:
    if not spec(p).decode_only:
        return ("the Triton paged kernel is decode-only (one query per request) and this batch has prefill rows; "
                "a mixed batch runs on eager, sdpa, flex")
    return None


def triton_build(p: Problem, device: torch.device, table: torch.Tensor) -> Fn:
    from attnbench.kernels.paged_decode import dense_as_pages, paged_decode

    s = spec(p)
    lens = torch.tensor(s.kv_lens, device=device, dtype=torch.int32)
    dense = p.param("kv_layout") == "dense"
    table = torch.arange(p.batch, device=device, dtype=torch.int32)[:, None] if dense else table.to(device)

    def triton_mixed(q, k, v):
        check_q(q, p)
        if dense:  # the padded cache read in place as B pages of max S slots
            k, v = dense_as_pages(k)[0], dense_as_pages(v)[0]
        return paged_decode(q.transpose(0, 2), k, v, table, lens, max_len=max(s.kv_lens)).transpose(0, 2)

    return triton_mixed
