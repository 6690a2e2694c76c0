"""Local block attention that also returns the log-sum-exp, and the exact merge of partial
results (the blockwise softmax of Milakov & Gimelshein 2018, as used by FlashAttention and Ring
Attention, Liu et al. 2023).

A block function is  f(q, k, v, causal, scale) -> (out, lse)  with
    q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) with Lk >= 1; causal: q and k hold the same positions
    and the local lower triangle is attended (else every pair),
    out (B, Hq, Lq, D) normalised within the block, lse (B, Hq, Lq) fp32, natural log,
    -inf for rows that see no key in the block (their out is 0).
Two partial results of the same rows merge exactly:
    lse = logaddexp(lse_a, lse_b),  out = e^(lse_a - lse)·out_a + e^(lse_b - lse)·out_b.

Backends (`BLOCKS`):
  sdpa   CPU: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu (returns logsumexp;
         GQA native). It crashes the process (SIGFPE) on an empty key block, which the plan
         never produces. CUDA: _scaled_dot_product_efficient_attention with
         compute_log_sumexp (untested here: the development machine has no GPU).
  eager  our own fp32 block: scores, causal mask, logsumexp, exp, PV (materialises Lq×Lk per block).
  triton hook for attnbench.kernels: needs `flash_attention_lse(q, k, v, causal, scale) ->
         (out, lse natural-log)`; unavailable (with that reason) until the kernels expose it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

BlockFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def eager_block(q, k, v, causal: bool, scale: float):
    """fp32 softmax attention of one block with its log-sum-exp (materialises the scores)."""
    groups = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, groups).float(), _repeat_kv(v, groups).float()
    s = (q.float() @ k.transpose(-2, -1)) * scale  # (B, Hq, Lq, Lk): 2·D FLOPs per pair
    if causal:
        keep = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, Hq, Lq); -inf where a row sees nothing
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
    return (p @ v).to(q.dtype), lse  # PV: 2·D FLOPs per pair


def sdpa_block(q, k, v, causal: bool, scale: float):
    """torch's fused kernels that return the log-sum-exp (flash on CPU, efficient on CUDA)."""
    if q.device.type == "cuda":
        groups = q.shape[1] // k.shape[1]
        out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, _repeat_kv(k, groups), _repeat_kv(v, groups), None, True, 0.0, causal, scale=scale)
        return out, lse[..., : q.shape[-2]]  # the kernel may pad lse's rows
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)


def triton_block(q, k, v, causal: bool, scale: float):
    from attnbench import kernels

    return kernels.flash_attention_lse(q, k, v, causal=causal, scale=scale)


BLOCKS: dict[str, BlockFn] = {"sdpa": sdpa_block, "eager": eager_block, "triton": triton_block}


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def merge_into(out_acc: torch.Tensor, lse_acc: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor,
               rows: tuple[int, int]) -> None:
    """Fold a block result for local query rows [rows) into fp32 accumulators, in place.

    out_acc (B, Hq, Lq, D) fp32, lse_acc (B, Hq, Lq) fp32 (-inf: nothing seen yet)."""
    a, b = rows
    lse_a = lse_acc[..., a:b]
    new = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isfinite(new), new, 0.0)  # rows that saw nothing stay 0 / -inf
    acc = out_acc[..., a:b, :]  # a view: updated in place, no (B, Hq, Lq, D) temporaries
    acc.mul_(torch.exp(lse_a - safe)[..., None])
    acc.addcmul_(out_b.float(), torch.exp(lse_b - safe)[..., None])
    lse_acc[..., a:b] = new
