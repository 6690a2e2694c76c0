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

Defaults l = 32, d = 16, l' = 64, n = 16, w = 512 (the paper's). Simplifications, said plainly: the
paper's compression φ is a learned MLP with intra-block position encoding, here the mean (as the
reference implementations' initialisation does not learn); the gates are sigmoids of an MLP of the
hidden state, here sigmoid(N(0, 1)) drawn in setup from GATE_SEED per (batch, head, query).

Backend `eager` only (dense masks per branch: the reference formulation, O(L²) memory). No flex,
Triton or gathered backend yet: the selected branch's blocks depend on the inputs, so a BlockMask or
the block-sparse kernel's layout would be rebuilt inside every call (FLA's NSA kernels do it fused).
FLOPs: 4·Hq·D per attended pair in each branch (compressed pairs: the visible pooled blocks), plus
the pooling (l·D adds per pooled block, keys and values).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.shared import check_heads, fill_defaults, io_bytes, repeat_kv, softmax_attention

DEFAULTS = {"cmp_block": 32, "stride": 16, "block": 64, "topk_blocks": 16, "window": 512}
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


def selected_mask(p_cmp: torch.Tensor, p: Problem, kv_heads: int) -> torch.Tensor:
    """(B, Hq, Lq, Lk) bool: the tokens (up to i') of each query's selected blocks."""
    lc, d, ls, n = p.param("cmp_block"), p.param("stride"), p.param("block"), p.param("topk_blocks")
    nsel, nc, dev = -(-p.seq_k // ls), p_cmp.shape[-1], p_cmp.device
    i, j = torch.arange(nc, device=dev)[:, None], torch.arange(nsel, device=dev)[None, :]
    overlap = ((i * d < (j + 1) * ls) & (i * d + lc > j * ls)).to(p_cmp.dtype)  # (nc, nsel)
    b, hq, lq, _ = p_cmp.shape
    score = (p_cmp @ overlap).view(b, kv_heads, hq // kv_heads, lq, nsel).sum(2)  # (B, Hkv, Lq, nsel)
    ip = positions(p, dev)
    cur = ip // ls
    blocks = torch.arange(nsel, device=dev)[None, :]
    forced = (blocks == 0) | (blocks == cur[:, None]) | (blocks == cur[:, None] - 1)
    score = torch.where(forced, torch.full_like(score, float("inf")), score)
    score = score.masked_fill(blocks > cur[:, None], float("-inf"))
    val, idx = score.topk(min(n, nsel), dim=-1)
    chosen = torch.zeros(b, kv_heads, lq, nsel + 1, dtype=torch.bool, device=dev)
    chosen.scatter_(-1, torch.where(val == float("-inf"), nsel, idx), True)
    tok = torch.arange(p.seq_k, device=dev)
    mask = chosen[..., :-1][..., tok // ls] & (tok[None, :] <= ip[:, None])  # (B, Hkv, Lq, Lk)
    return repeat_kv(mask, hq // kv_heads)


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
    for name in DEFAULTS:
        x = p.param(name)
        if not isinstance(x, int) or isinstance(x, bool) or x < 1:
            return f"bad {name} {x!r}; accepted: an integer >= 1"
    if p.param("topk_blocks") < 3:
        return (f"topk_blocks must be >= 3 (the first and two local blocks are always selected; "
                f"got {p.param('topk_blocks')})")
    if p.param("stride") > p.param("cmp_block"):
        return (f"stride {p.param('stride')} > cmp_block {p.param('cmp_block')} would skip tokens; "
                "accepted: stride <= cmp_block")
    return check_heads(p)


NSA = Variant(
    name="nsa", family="dynamic sparse", oracle="reference", decode_check=True,
    description="NSA (DeepSeek): gated compressed, selected-block and sliding-window branches "
                "(cmp_block=32, stride=16, block=64, topk_blocks=16, window=512)",
    time="O(L²/stride + L·n·block + L·w)", memory="O(L²)", reference=reference, flops=nsa_flops, bytes=io_bytes,
    backends=(Backend("eager", _eager_build, "the three branches with dense masks, gated (the reference)",
                      materializes=True),),
    resolve=resolve, why_unsupported=supports, defaults=dict(DEFAULTS), modes=("fwd", "decode"))

VARIANTS = (NSA,)
