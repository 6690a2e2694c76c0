"""FlashAttention: exact attention computed tile by tile with an online softmax, never
materialising the Lq×Lk scores (Dao et al. 2022, FlashAttention-2: Dao 2023).

For each block of keys the running row maximum m, normaliser l and output accumulator are
rescaled:  m' = max(m, rowmax(S_blk)),  l' = e^(m-m')·l + rowsum(e^(S_blk-m')),
acc' = e^(m-m')·acc + e^(S_blk-m')·V_blk,  and out = acc / l at the end.

Backends: `eager` is that loop in plain PyTorch (readable, memory O(L·block)); `sdpa-flash` is
torch's fused flash kernel (CPU and CUDA); `flex` is FlexAttention; `triton` (our kernel) is
attached by attnbench.variants.backends.triton.
"""

from __future__ import annotations

import math

import torch

from attnbench.core.problem import Problem
from attnbench.variants.backends import triton
from attnbench.variants.backends.flex import flex_backend
from attnbench.variants.base import Backend, Fn, Variant
from attnbench.variants.shared import (
    attention_flops,
    check_heads,
    exact_reference,
    fill_defaults,
    io_bytes,
    repeat_kv,
    sdpa_backends,
)


def tiled_attention(q, k, v, problem: Problem, block: int = 256) -> torch.Tensor:
    """Online-softmax attention over key blocks of `block` keys (bottom-right causal)."""
    groups = problem.groups
    scale = 1.0 / math.sqrt(q.shape[-1])
    lq, lk = q.shape[-2], k.shape[-2]
    offset = lk - lq
    rows = torch.arange(lq, device=q.device)[:, None]
    m = torch.full(q.shape[:-1] + (1,), float("-inf"), device=q.device, dtype=torch.float32)
    l = torch.zeros_like(m)
    acc = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
    stop = lk if not problem.causal else min(lk, lq + offset)  # keys past the last visible: skipped
    for start in range(0, stop, block):
        kb = repeat_kv(k[..., start:start + block, :], groups)
        vb = repeat_kv(v[..., start:start + block, :], groups)
        s = (q @ kb.transpose(-2, -1)).float() * scale  # (B, Hq, Lq, blk)
        if problem.causal:
            cols = torch.arange(start, start + kb.shape[-2], device=q.device)[None, :]
            s = s.masked_fill(cols > rows + offset, float("-inf"))
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # rows with nothing seen yet
        p = torch.exp(s - m_safe)
        alpha = torch.exp(m - m_safe)
        l = alpha * l + p.sum(-1, keepdim=True)
        acc = alpha * acc + p.to(v.dtype) @ vb
        m = m_new
    return (acc / l.clamp_min(1e-30)).to(q.dtype)


def _tiled_backend() -> Backend:
    def build(problem: Problem, device: torch.device) -> Fn:
        def tiled(q, k, v):
            return tiled_attention(q, k, v, problem)

        return tiled

    return Backend("eager", build, "online-softmax loop over 256-key tiles in plain PyTorch",
                   workspace=tile_workspace)


def tile_workspace(p: Problem, block: int = 256) -> float:
    """One tile's fp32 (B, Hq, Lq, block) scores four times over (the product, scaled, minus the max,
    exponentiated) and the fp32 accumulator with its update (2 × B·Hq·Lq·D)."""
    rows = p.batch * p.heads * p.seq_q
    return 4.0 * (4 * rows * min(block, p.seq_k) + 2 * rows * p.head_dim)


FLASH = Variant(
    name="flash", family="exact", oracle="softmax", decode_check=True,
    description="exact attention tile by tile with an online softmax (FlashAttention)",
    time="O(L²)", memory="O(L)", reference=exact_reference, flops=attention_flops, bytes=io_bytes,
    backends=(*sdpa_backends(names=("sdpa-flash",)), flex_backend(), _tiled_backend(), triton.flash_backend()),
    resolve=fill_defaults, why_unsupported=check_heads)

VARIANTS = (FLASH,)
