"""MoBA, mixture of block attention (Lu et al. 2025, arXiv:2502.13189; Kimi). Variant `moba`,
family "dynamic sparse".

The keys are cut into blocks of `block` tokens. Each query (position i' on the key axis, bottom-right
aligned) scores the blocks by its dot product with their mean key, gate_j = q · mean(K_block j), and
attends exactly (softmax) to the tokens of its top blocks:

    current block  c = i' // block: always attended, causally (keys c·block .. i')
    past blocks    the top (`topk_blocks` − 1) of the blocks j < c by gate_j (all when fewer exist)
    out = softmax(q Kᵀ/√D over those tokens) V

Per query head (GQA: a query head scores its KV head's block means). Causal always; modes fwd
(prefill, Lq = Lk) and decode (the last query). Defaults block = 64, topk_blocks = 3 (the paper's
8k-context setting is block 512, top 3; 64 keeps blocks several per sequence at CPU lengths).
`select_by` (variants/selection.py): "token" (the paper: each query its own blocks) or
"query_block" (the queries of one block select together by their mean query's gate, q̄ · mean(K_j),
which is the mean of their gates; the same in decode, where there is one query).

Backends
  eager   dense scores over every key, masked to the selected blocks and the causal current block
  gather  each query's selected blocks gathered (query rows in blocks, memory O(L·k·block)), then a
          masked softmax over those k·block keys only
  flex    compiled FlexAttention with a BlockMask built from the selection (exact per token: a
          mask_mod looks each query's blocks up). The selection depends on q and k, so the gate,
          the top-k AND the BlockMask are computed inside the timed call: the time includes them.
  triton  attnbench's block-sparse Triton kernel over a per-(batch, head) layout built from the
          selection, inside the timed call too; query-tiled, so only select_by=query_block (or
          decode): per-token selection is `unsupported` there, with the reason.

FLOPs: the gate 2·Hq·D per (query, past block) scored — per (query block, past block) under
query_block, plus D adds per query for the mean query — plus the block means (D adds a key), plus
4·Hq·D per attended pair, pairs_i = min(topk − 1, c_i)·block + (i' − c_i·block + 1) (the same for
both select_by: every query attends min(topk − 1, c) whole past blocks and its causal current one).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from attnbench.core.problem import Problem
from attnbench.variants.backends import triton
from attnbench.variants.backends.flex import flex_backend
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.selection import (
    block_layout,
    check_select_by,
    flex_selected,
    flex_supports,
    pool_by_query_block,
    triton_supports,
)
from attnbench.variants.shared import check_heads, fill_defaults, io_bytes, repeat_kv

DEFAULTS = {"block": 64, "topk_blocks": 3, "select_by": "token"}
ROW_BYTES = 64 * 2**20  # gather: query rows per block so that one block's gathered keys stay under this


def positions(p: Problem, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(i' (Lq,), current block (Lq,)): each query's key-axis position and block."""
    ip = torch.arange(p.seq_q, device=device) + (p.seq_k - p.seq_q)
    return ip, ip // p.param("block")


def select_blocks(q, k, p: Problem) -> torch.Tensor:
    """(B, Hq, Lq, topk_blocks − 1) int64: each query's top past blocks by q · mean key, −1 where
    fewer past blocks exist. Gate scores in float32."""
    b, hq, lq, d = q.shape
    bs, lk = p.param("block"), k.shape[2]
    nb = -(-lk // bs)
    pad = nb * bs - lk
    kf = torch.nn.functional.pad(k.float(), (0, 0, 0, pad)).view(b, k.shape[1], nb, bs, d)
    counts = torch.full((nb,), bs, device=k.device, dtype=torch.float32)
    counts[-1] = bs - pad
    means = repeat_kv(kf.sum(3) / counts[:, None], hq // k.shape[1])  # (B, Hq, nb, D)
    gate = pool_by_query_block(q.float() @ means.transpose(-1, -2), p, "mean")  # (B, Hq, Lq, nb)
    _, cur = positions(p, q.device)
    past = torch.arange(nb, device=q.device)[None, :] < cur[:, None]  # (Lq, nb)
    gate = gate.masked_fill(~past, float("-inf"))
    want = min(p.param("topk_blocks") - 1, nb)
    if want <= 0:
        return torch.empty(b, hq, lq, 0, dtype=torch.int64, device=q.device)
    val, idx = gate.topk(want, dim=-1)
    return idx.masked_fill(val == float("-inf"), -1)


def chosen_blocks(sel: torch.Tensor, p: Problem) -> torch.Tensor:
    """(B, Hq, Lq, nb) bool: each query's selected past blocks and its current block."""
    nb = -(-p.seq_k // p.param("block"))
    _, cur = positions(p, sel.device)
    chosen = torch.zeros(*sel.shape[:3], nb + 1, dtype=torch.bool, device=sel.device)
    chosen.scatter_(-1, torch.where(sel < 0, nb, sel), True)  # −1 (no block) lands in the extra column
    chosen[..., :-1] |= torch.arange(nb, device=sel.device) == cur[:, None]
    return chosen[..., :-1]


def token_mask(sel: torch.Tensor, p: Problem, device) -> torch.Tensor:
    """(B, Hq, Lq, Lk) bool: the selected past blocks' tokens and the current block up to i'."""
    bs = p.param("block")
    ip, cur = positions(p, device)
    j = torch.arange(p.seq_k, device=device)
    blk = j // bs
    mask = (blk[None, :] == cur[:, None]) & (j[None, :] <= ip[:, None])  # (Lq, Lk)
    mask = mask.expand(*sel.shape[:2], -1, -1).clone()
    for s in range(sel.shape[-1]):
        mask |= blk[None, None, None, :] == sel[..., s, None]  # −1 matches no block
    return mask


def _softmax_rows(s: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s if s.dtype == torch.float64 else s.float(), dim=-1).nan_to_num(0.0)


def dense_moba(q, k, v, p: Problem) -> torch.Tensor:
    """The reference (and the eager backend): dense scores masked to each query's blocks."""
    sel = select_blocks(q, k, p)
    g = q.shape[1] // k.shape[1]
    s = q @ repeat_kv(k, g).transpose(-1, -2) / math.sqrt(q.shape[-1])
    probs = _softmax_rows(s, token_mask(sel, p, q.device))
    return (probs.to(v.dtype) @ repeat_kv(v, g)).to(q.dtype)


def gathered_moba(q, k, v, p: Problem) -> torch.Tensor:
    """Each query's k blocks gathered (the current block last), softmax over those keys only."""
    b, hq, lq, d = q.shape
    bs, g = p.param("block"), hq // k.shape[1]
    sel = select_blocks(q, k, p)
    ip, cur = positions(p, q.device)
    nb = -(-p.seq_k // bs)
    kp, vp = (torch.nn.functional.pad(repeat_kv(x, g), (0, 0, 0, nb * bs - p.seq_k)) for x in (k, v))
    kb, vb = kp.view(b, hq, nb, bs, d), vp.view(b, hq, nb, bs, d)
    offs = torch.arange(bs, device=q.device)
    rows = max(1, ROW_BYTES // (b * hq * (sel.shape[-1] + 1) * bs * d * q.element_size() * 2))
    out = torch.empty_like(q)
    for r0 in range(0, lq, rows):
        r1 = min(lq, r0 + rows)
        blocks = torch.cat([sel[:, :, r0:r1], cur[r0:r1].expand(b, hq, -1)[..., None]], -1)  # (B, Hq, R, k)
        idx = blocks.clamp(min=0)[..., None, None].expand(-1, -1, -1, -1, bs, d)
        src = kb[:, :, None].expand(-1, -1, r1 - r0, -1, -1, -1)
        keys = torch.gather(src, 3, idx).flatten(3, 4)  # (B, Hq, R, k·bs, D)
        vals = torch.gather(vb[:, :, None].expand(-1, -1, r1 - r0, -1, -1, -1), 3, idx).flatten(3, 4)
        tok = blocks[..., None] * bs + offs  # (B, Hq, R, k, bs): token positions
        ok = (blocks[..., None] >= 0) & (tok <= ip[r0:r1, None, None]) & (tok < p.seq_k)
        s = (q[:, :, r0:r1, None, :] @ keys.transpose(-1, -2)).squeeze(-2) / math.sqrt(d)  # (B, Hq, R, k·bs)
        probs = _softmax_rows(s, ok.flatten(3, 4))
        out[:, :, r0:r1] = (probs.to(v.dtype)[..., None, :] @ vals).squeeze(-2).to(q.dtype)
    return out


def _build(fn):
    def build(p: Problem, device: torch.device) -> Fn:
        return lambda q, k, v: fn(q, k, v, p)

    return build


def _flex_build(p: Problem, device: torch.device) -> Fn:
    def moba_flex(q, k, v):  # selection and BlockMask inside the call: they depend on q and k
        return flex_selected(q, k, v, chosen_blocks(select_blocks(q, k, p), p), p.param("block"))

    return moba_flex


def _triton_build(p: Problem, device: torch.device) -> Fn:
    from attnbench.kernels import block_sparse_attention, build_block_index

    bs = p.param("block")

    def moba_triton(q, k, v):  # the layout's index is built inside the call: it depends on q and k
        index = build_block_index(block_layout(chosen_blocks(select_blocks(q, k, p), p), bs), block=bs)
        return block_sparse_attention(q, k, v, index, causal=True)

    return moba_triton


def selection_bytes(p: Problem) -> float:
    """What flex and triton hold for the selection: the float32 gates and the chosen-block flags per
    (query, key block), B·Hq·Lq·nb·(4 + 1) bytes (the BlockMask's or the index's integers are smaller)."""
    return float(p.batch * p.heads * p.seq_q * -(-p.seq_k // p.param("block")) * 5)


def gather_bytes(p: Problem) -> float:
    """What gather holds beyond its kind: K and V repeated to the query heads and padded, and one
    block of gathered rows (keys and values, up to ROW_BYTES, the keys' flattened copy half again)."""
    k = min(p.param("topk_blocks"), -(-p.seq_k // p.param("block")))
    rows = p.batch * p.heads * p.seq_q * k * p.param("block") * p.head_dim * p.itemsize * 2
    return float(2 * p.batch * p.heads * p.seq_k * p.head_dim * p.itemsize + 1.5 * min(rows, ROW_BYTES))


def attended_pairs(p: Problem) -> int:
    ip, cur = positions(p, "cpu")
    past = cur.clamp(max=p.param("topk_blocks") - 1) * p.param("block")
    return int((past + ip - cur * p.param("block") + 1).sum())


def moba_flops(p: Problem) -> float:
    _, cur = positions(p, "cpu")
    if p.param("select_by") == "query_block":  # one gate per (query block, past block), plus the mean query
        groups = torch.unique(cur)
        gate = 2.0 * p.batch * p.heads * p.head_dim * int(groups.sum()) + p.batch * p.heads * p.seq_q * p.head_dim
    else:
        gate = 2.0 * p.batch * p.heads * p.head_dim * int(cur.sum())  # every past block scored
    means = float(p.batch * p.kv_heads * p.seq_k * p.head_dim)
    return gate + means + 4.0 * p.batch * p.heads * p.head_dim * attended_pairs(p)


def resolve(p: Problem) -> Problem:
    p = fill_defaults(p, kv_heads=max(1, p.heads // 4), **DEFAULTS)
    lq = 1 if p.mode == "decode" else p.seq_q
    return replace(p, seq_q=lq, seq_k=p.seq_k if p.mode == "decode" else lq, causal=True)


def supports(p: Problem) -> Reason:
    for name in ("block", "topk_blocks"):
        x = p.param(name)
        if not isinstance(x, int) or isinstance(x, bool) or x < 1:
            return f"bad {name} {x!r}; accepted: an integer >= 1"
    return check_select_by(p) or check_heads(p)


MOBA = Variant(
    name="moba", family="dynamic sparse", oracle="reference", decode_check=True,
    description="MoBA (Kimi): each query attends its current block and its top blocks by q·mean key "
                "(--param block=64, topk_blocks=3)",
    time="O(L²/block + L·k·block)", memory="O(L²)", reference=dense_moba, flops=moba_flops, bytes=io_bytes,
    backends=(Backend("gather", _build(gathered_moba), "each query's blocks gathered, softmax over them only",
                      memory="O(L·k·block)", workspace=gather_bytes),
              Backend("eager", _build(dense_moba), "dense scores masked to each query's blocks (the reference)",
                      materializes=True),
              Backend("flex", _flex_build, "gate, top-k and a BlockMask from the selection in the call, then "
                      "compiled FlexAttention", why_unavailable=flex_backend().why_unavailable,
                      why_unsupported=flex_supports, compiles=True, workspace=selection_bytes),
              Backend("triton", _triton_build, "gate and top-k in torch, then attnbench's Triton block-sparse "
                      "kernel over the selection (select_by=query_block or decode; fp32: TF32 dots)",
                      why_unavailable=triton.flash_backend().why_unavailable, why_unsupported=triton_supports,
                      tf32_dots=True, workspace=selection_bytes)),
    resolve=resolve, why_unsupported=supports, defaults=dict(DEFAULTS), modes=("fwd", "decode"),
    picture=lambda p: token_mask(select_blocks(*_picture_inputs(p), p), p, "cpu")[0, 0].float())


def _picture_inputs(p: Problem):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, p.heads, p.seq_q, p.head_dim, generator=g)
    k = torch.randn(1, p.kv_heads, p.seq_k, p.head_dim, generator=g)
    return q, k


VARIANTS = (MOBA,)
