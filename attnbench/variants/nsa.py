"""NSA, natively trainable sparse attention (Yuan et al. 2025, arXiv:2502.11089; DeepSeek). Variant
`nsa`, family "dynamic sparse". Three branches per query (position i' on the key axis, causal),
mixed by gates:

    compressed  keys and values pooled over blocks of `cmp_block` (l) tokens every `stride` (d)
                tokens; a query sees the blocks that end at or before i': o_cmp = softmax(q K̃ᵀ/√D) Ṽ
    selected    blocks of `block` (l') tokens ranked by the compressed branch's probabilities summed
                over the compression blocks that overlap them (and over the query heads of a KV
                head: GQA shares the selection); the first block and the two local ones (the
                query's and the one before) always, up to `topk_blocks` (n) blocks; exact softmax
                over their tokens up to i'
    window      the last `window` (w) keys up to i'
    out = g_cmp·o_cmp + g_slc·o_slc + g_win·o_win

Defaults l = 32, d = 16, l' = 64, n = 16, w = 512 (the paper's). `select_by` (variants/selection.py):
"token" (the paper: each query ranks the blocks) or "query_block" (the queries in one selection
block rank them together by their importances summed, as a query-tiled kernel needs). Simplifications, said plainly: the
paper's compression φ is a learned MLP with intra-block position encoding, here the mean (as the
reference implementations' initialisation does not learn); the gates are sigmoids of an MLP of the
hidden state, here sigmoid(N(0, 1)) drawn in setup from GATE_SEED per (batch, head, query).

Backends (the compressed branch, whose probabilities rank the blocks, is torch in all of them)
  eager   dense masks per branch: the reference formulation, O(L²) memory
  flex    selected branch: compiled FlexAttention with a BlockMask built from the selection INSIDE
          the timed call (the selection depends on q and k; the time includes it); window branch:
          FlexAttention with a sliding-window BlockMask built in setup
  triton  selected branch: attnbench's block-sparse Triton kernel over a per-(batch, head) layout
          built in the call; window branch: the Triton FlashAttention kernel with its window.
          Query-tiled: select_by=query_block (or decode) only; per-token selection is
          `unsupported` there, with the reason.
FLOPs: 4·Hq·D per attended pair in each branch (compressed pairs: the visible pooled blocks), plus
the pooling (l·D adds per pooled block, keys and values); the block ranking (importance sums and
top-k) is not counted. The pairs are the same under both select_by.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from attnbench.core.problem import Problem
from attnbench.variants.backends import triton
from attnbench.variants.backends.flex import and_masks, causal_mod, compiled_block_mask, compiled_flex, flex_backend
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.selection import (
    FLEX_TILE,
    block_layout,
    check_select_by,
    flex_selected,
    flex_supports,
    pool_by_query_block,
    triton_supports,
)
from attnbench.variants.shared import check_heads, fill_defaults, io_bytes, repeat_kv, softmax_attention

INTS = {"cmp_block": 32, "stride": 16, "block": 64, "topk_blocks": 16, "window": 512}
DEFAULTS = INTS | {"select_by": "token"}
GATE_SEED = 2502


def gates(p: Problem, device, dtype) -> torch.Tensor:
    """(B, Hq, Lq, 3): g_cmp, g_slc, g_win = sigmoid(N(0, 1)) from GATE_SEED."""
    g = torch.Generator(device="cpu").manual_seed(GATE_SEED)
    return torch.sigmoid(torch.randn(p.batch, p.heads, p.seq_q, 3, generator=g)).to(device=device, dtype=dtype)


def positions(p: Problem, device) -> torch.Tensor:
    return torch.arange(p.seq_q, device=device) + (p.seq_k - p.seq_q)


def n_cmp(p: Problem) -> int:
    lc, d = p.param("cmp_block"), p.param("stride")
    return max(0, (p.seq_k - lc) // d + 1)


def compressed(q, k, v, p: Problem):
    """(o_cmp (B, Hq, Lq, D), p_cmp (B, Hq, Lq, n_cmp)): attention over the mean-pooled blocks."""
    lc, d, nc = p.param("cmp_block"), p.param("stride"), n_cmp(p)
    b, hq, lq, dim = q.shape
    if nc == 0:
        return torch.zeros_like(q), q.new_zeros(b, hq, lq, 0)
    g = hq // k.shape[1]
    kc, vc = (repeat_kv(x.unfold(2, lc, d)[:, :, :nc].mean(-1), g) for x in (k, v))  # (B, Hq, nc, D)
    ends = torch.arange(nc, device=q.device) * d + lc - 1
    seen = ends[None, :] <= positions(p, q.device)[:, None]  # (Lq, nc)
    s = (q @ kc.transpose(-1, -2) / math.sqrt(dim)).masked_fill(~seen, float("-inf"))
    probs = torch.softmax(s if s.dtype == torch.float64 else s.float(), -1).nan_to_num(0.0).to(q.dtype)
    return probs @ vc, probs


def selected_blocks(p_cmp: torch.Tensor, p: Problem, kv_heads: int) -> torch.Tensor:
    """(B, Hkv, Lq, nsel) bool: each query's selected blocks (shared by a KV head's query heads)."""
    lc, d, ls, n = p.param("cmp_block"), p.param("stride"), p.param("block"), p.param("topk_blocks")
    nsel, nc, dev = -(-p.seq_k // ls), p_cmp.shape[-1], p_cmp.device
    i, j = torch.arange(nc, device=dev)[:, None], torch.arange(nsel, device=dev)[None, :]
    overlap = ((i * d < (j + 1) * ls) & (i * d + lc > j * ls)).to(p_cmp.dtype)  # (nc, nsel)
    b, hq, lq, _ = p_cmp.shape
    score = (p_cmp @ overlap).view(b, kv_heads, hq // kv_heads, lq, nsel).sum(2)  # (B, Hkv, Lq, nsel)
    score = pool_by_query_block(score, p, "sum")
    ip = positions(p, dev)
    cur = ip // ls
    blocks = torch.arange(nsel, device=dev)[None, :]
    forced = (blocks == 0) | (blocks == cur[:, None]) | (blocks == cur[:, None] - 1)
    score = torch.where(forced, torch.full_like(score, float("inf")), score)
    score = score.masked_fill(blocks > cur[:, None], float("-inf"))
    val, idx = score.topk(min(n, nsel), dim=-1)
    chosen = torch.zeros(b, kv_heads, lq, nsel + 1, dtype=torch.bool, device=dev)
    chosen.scatter_(-1, torch.where(val == float("-inf"), nsel, idx), True)
    return chosen[..., :-1]


def selected_mask(p_cmp: torch.Tensor, p: Problem, kv_heads: int) -> torch.Tensor:
    """(B, Hq, Lq, Lk) bool: the tokens (up to i') of each query's selected blocks."""
    chosen = selected_blocks(p_cmp, p, kv_heads)
    tok = torch.arange(p.seq_k, device=p_cmp.device)
    mask = chosen[..., tok // p.param("block")] & (tok[None, :] <= positions(p, p_cmp.device)[:, None])
    return repeat_kv(mask, p_cmp.shape[1] // kv_heads)  # (B, Hq, Lq, Lk)


def window_mask(p: Problem, device) -> torch.Tensor:
    ip, tok = positions(p, device)[:, None], torch.arange(p.seq_k, device=device)[None, :]
    return (tok <= ip) & (tok > ip - p.param("window"))


def nsa_attention(q, k, v, p: Problem, g: torch.Tensor) -> torch.Tensor:
    """The three branches, mixed by the gates g (B, Hq, Lq, 3)."""
    o_cmp, p_cmp = compressed(q, k, v, p)
    o_slc = softmax_attention(q, k, v, mask=selected_mask(p_cmp, p, k.shape[1]))
    o_win = softmax_attention(q, k, v, mask=window_mask(p, q.device))
    return g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_win


def reference(q, k, v, p: Problem) -> torch.Tensor:
    return nsa_attention(q, k, v, p, gates(p, q.device, q.dtype))


def _eager_build(p: Problem, device: torch.device) -> Fn:
    g = gates(p, device, p.torch_dtype)
    return lambda q, k, v: nsa_attention(q, k, v, p, g)


def _flex_build(p: Problem, device: torch.device) -> Fn:
    g = gates(p, device, p.torch_dtype)
    w = p.param("window")
    in_window = and_masks(causal_mod(p), lambda b, h, q_idx, kv_idx: kv_idx + w > q_idx + (p.seq_k - p.seq_q))
    window = compiled_block_mask()(in_window, B=None, H=None, Q_LEN=p.seq_q, KV_LEN=p.seq_k, device=device,
                                   BLOCK_SIZE=FLEX_TILE)

    def nsa_flex(q, k, v):  # the selection and its BlockMask inside the call: they depend on q and k
        o_cmp, p_cmp = compressed(q, k, v, p)
        chosen = repeat_kv(selected_blocks(p_cmp, p, k.shape[1]), q.shape[1] // k.shape[1])
        o_slc = flex_selected(q, k, v, chosen, p.param("block"))
        o_win = compiled_flex()(q, k, v, block_mask=window, enable_gqa=q.shape[1] != k.shape[1])
        return g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_win

    return nsa_flex


def _triton_build(p: Problem, device: torch.device) -> Fn:
    from attnbench.kernels import block_sparse_attention, build_block_index, flash_attention

    g = gates(p, device, p.torch_dtype)
    bs = p.param("block")

    def nsa_triton(q, k, v):  # the layout's index is built inside the call: it depends on q and k
        o_cmp, p_cmp = compressed(q, k, v, p)
        chosen = repeat_kv(selected_blocks(p_cmp, p, k.shape[1]), q.shape[1] // k.shape[1])
        index = build_block_index(block_layout(chosen, bs), block=bs)
        o_slc = block_sparse_attention(q, k, v, index, causal=True)
        o_win = flash_attention(q, k, v, causal=True, window=p.param("window"))
        return g[..., 0:1] * o_cmp + g[..., 1:2] * o_slc + g[..., 2:3] * o_win

    return nsa_triton


def selection_bytes(p: Problem) -> float:
    """What flex and triton hold beyond their kind: the compressed branch's float32 scores and
    probabilities per (query, pooled block), the selection's block scores and flags, and the three
    branch outputs with their gated copies (six (B, Hq, Lq, D) tensors at once)."""
    nsel = -(-p.seq_k // p.param("block"))
    select = p.batch * p.seq_q * (2 * p.heads * n_cmp(p) * 4 + p.kv_heads * nsel * 4 + p.heads * nsel)
    return float(select + 6 * p.batch * p.heads * p.seq_q * p.head_dim * p.itemsize)


def picture(p: Problem) -> torch.Tensor:
    """(Lq, Lk) 0/1: the tokens each query attends exactly on seed-0 inputs (head 0): its selected
    blocks (up to i') and its window. The compressed branch (pooled blocks) is not drawn."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, p.heads, p.seq_q, p.head_dim, generator=g)
    k = torch.randn(1, p.kv_heads, p.seq_k, p.head_dim, generator=g)
    _, p_cmp = compressed(q, k, k, p)
    return (selected_mask(p_cmp, p, p.kv_heads)[0, 0] | window_mask(p, "cpu")).float()


def branch_pairs(p: Problem) -> dict[str, int]:
    """Attended pairs per head of each branch (the selection count is fixed: min(n, cur + 1) blocks)."""
    lc, d, ls, n, w = (p.param(x) for x in ("cmp_block", "stride", "block", "topk_blocks", "window"))
    ip = positions(p, "cpu")
    nc = n_cmp(p)
    cmp = ((ip[:, None] >= torch.arange(nc)[None, :] * d + lc - 1).sum()) if nc else torch.tensor(0)
    cur = ip // ls
    slc = (torch.minimum(torch.full_like(cur, n), cur + 1) - 1) * ls + (ip - cur * ls + 1)
    win = torch.minimum(ip + 1, torch.full_like(ip, w))
    return {"compressed": int(cmp), "selected": int(slc.sum()), "window": int(win.sum())}


def nsa_flops(p: Problem) -> float:
    pairs = sum(branch_pairs(p).values())
    pooling = 2.0 * p.batch * p.kv_heads * n_cmp(p) * p.param("cmp_block") * p.head_dim
    return 4.0 * p.batch * p.heads * p.head_dim * pairs + pooling


def resolve(p: Problem) -> Problem:
    p = fill_defaults(p, kv_heads=max(1, p.heads // 4), **DEFAULTS)
    lq = 1 if p.mode == "decode" else p.seq_q
    return replace(p, seq_q=lq, seq_k=p.seq_k if p.mode == "decode" else lq, causal=True)


def supports(p: Problem) -> Reason:
    for name in INTS:
        x = p.param(name)
        if not isinstance(x, int) or isinstance(x, bool) or x < 1:
            return f"bad {name} {x!r}; accepted: an integer >= 1"
    if p.param("topk_blocks") < 3:
        return (f"topk_blocks must be >= 3 (the first and two local blocks are always selected; "
                f"got {p.param('topk_blocks')})")
    if p.param("stride") > p.param("cmp_block"):
        return (f"stride {p.param('stride')} > cmp_block {p.param('cmp_block')} would skip tokens; "
                "accepted: stride <= cmp_block")
    return check_select_by(p) or check_heads(p)


NSA = Variant(
    name="nsa", family="dynamic sparse", oracle="reference", decode_check=True,
    description="NSA (DeepSeek): gated compressed, selected-block and sliding-window branches "
                "(cmp_block=32, stride=16, block=64, topk_blocks=16, window=512)",
    time="O(L²/stride + L·n·block + L·w)", memory="O(L²)", reference=reference, flops=nsa_flops, bytes=io_bytes,
    backends=(Backend("eager", _eager_build, "the three branches with dense masks, gated (the reference)",
                      materializes=True),
              Backend("flex", _flex_build, "compressed branch in torch; selected blocks (BlockMask built in the "
                      "call) and window by compiled FlexAttention", why_unavailable=flex_backend().why_unavailable,
                      why_unsupported=flex_supports, compiles=True, workspace=selection_bytes),
              Backend("triton", _triton_build, "compressed branch in torch; selected blocks by the Triton "
                      "block-sparse kernel (select_by=query_block or decode), window by the Triton "
                      "FlashAttention kernel (fp32: TF32 dots)", why_unavailable=triton.flash_backend().why_unavailable,
                      why_unsupported=triton_supports, tf32_dots=True, workspace=selection_bytes)),
    resolve=resolve, why_unsupported=supports, defaults=dict(DEFAULTS), modes=("fwd", "decode"), picture=picture)

VARIANTS = (NSA,)
