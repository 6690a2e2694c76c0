"""Shared math and backend factories for the variant families.

Shape legend: q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D); scores (B, Hq, Lq, Lk).
Causal masks are bottom-right aligned: query i sees key j iff j <= i + (Lk - Lq).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason
from attnbench.variants.patterns import causal_mask


# ---------------------------------------------------------------- problem defaults
def fill_defaults(
    problem: Problem, *, kv_heads: int | None = None, seq_k: int | None = None, causal: bool | None = None, **params
) -> Problem:
    """Fill the 'variant's choice' fields (kv_heads == 0, seq_k == 0) and default params."""
    p = problem
    if p.kv_heads == 0:
        p = replace(p, kv_heads=kv_heads if kv_heads is not None else p.heads)
    if p.seq_k == 0:
        p = replace(p, seq_k=seq_k if seq_k is not None else p.seq_q)
    if causal is not None:
        p = replace(p, causal=causal)
    missing = {k: v for k, v in params.items() if p.param(k) is None}
    return p.with_params(**missing) if missing else p


def check_heads(problem: Problem) -> Reason:
    if problem.kv_heads < 1 or problem.heads % problem.kv_heads:
        return f"kv_heads={problem.kv_heads} must divide heads={problem.heads}"
    return None


# ---------------------------------------------------------------- masks and math
def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, Hkv, L, D) -> (B, Hkv*groups, L, D), as naive GQA code does (a real copy)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def softmax_attention(
    q,
    k,
    v,
    *,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float = 0.0,
    sink: torch.Tensor | None = None,
) -> torch.Tensor:
    """Textbook softmax(QKᵀ·scale + bias, masked)·V, materialising the (B, Hq, Lq, Lk) scores.

    softcap > 0: QKᵀ·scale becomes softcap·tanh(QKᵀ·scale / softcap) first (Gemma-2). sink (Hq,):
    a learned sink logit per query head, an extra key of that score and value 0 (modifiers.py).
    Rows with no visible key produce 0 (not NaN)."""
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, Hq, Lq, Lk)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    allowed = mask
    if causal:
        cm = causal_mask(q.shape[-2], k.shape[-2], q.device)
        allowed = cm if allowed is None else allowed & cm
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    # fp16/bf16 scores are upcast to fp32 for the softmax; fp64 (the oracle's dtype) stays fp64
    scores = scores if scores.dtype == torch.float64 else scores.float()
    if sink is not None:  # (B, Hq, Lq, Lk + 1): the sink's column is dropped after the softmax
        column = sink.to(scores).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, column], -1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    if allowed is not None:  # rows with no visible key are all -inf: their NaNs become 0
        probs = probs.nan_to_num(0.0)
    return torch.matmul(probs.to(q.dtype), v)


def exact_reference(q, k, v, problem: Problem) -> torch.Tensor:
    return softmax_attention(q, k, v, causal=problem.causal, softcap=problem.param("softcap") or 0.0)


# ---------------------------------------------------------------- cost models
def attention_flops(problem: Problem, pairs: int | None = None) -> float:
    """Forward FLOPs of exact attention: QKᵀ and PV are 2·D FLOPs per attended pair each,
    so 4·B·Hq·pairs·D (softmax ignored, as FlashAttention and tritonbench count)."""
    pairs = problem.attended_pairs() if pairs is None else pairs
    return 4.0 * problem.batch * problem.heads * pairs * problem.head_dim


def io_bytes(problem: Problem) -> float:
    """Forward minimum bytes: read q, k, v once and write out once."""
    q_or_o = problem.batch * problem.heads * problem.seq_q * problem.head_dim
    kv = problem.batch * problem.kv_heads * problem.seq_k * problem.head_dim
    return float((2 * q_or_o + 2 * kv) * problem.itemsize)


def kv_cache_bytes(problem: Problem) -> float:
    """Bytes of K and V a decode step must read: 2·B·Hkv·Lk·D·itemsize."""
    return float(2 * problem.batch * problem.kv_heads * problem.seq_k * problem.head_dim * problem.itemsize)


# ---------------------------------------------------------------- backend factories
def eager_backend(
    math_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Problem], torch.Tensor],
    description: str = "materialised softmax(QKᵀ)V in plain PyTorch",
) -> Backend:
    def build(problem: Problem, device: torch.device) -> Fn:
        def eager(q, k, v):
            return math_fn(q, k, v, problem)

        return eager

    return Backend("eager", build, description, materializes=True)


SDPA_KERNELS = {
    "sdpa": None,
    "sdpa-math": "MATH",
    "sdpa-flash": "FLASH_ATTENTION",
    "sdpa-efficient": "EFFICIENT_ATTENTION",
    "sdpa-cudnn": "CUDNN_ATTENTION",
}


def _sdpa_available(name: str) -> Callable[[torch.device], Reason]:
    def why_unavailable(device: torch.device) -> Reason:
        if name in ("sdpa-efficient", "sdpa-cudnn") and device.type != "cuda":
            return f"{name} exists only on CUDA devices"
        if name == "sdpa-cudnn" and device.type == "cuda" and not torch.backends.cudnn.is_available():
            return "cuDNN is not available"
        return None

    return why_unavailable


def _sdpa_supports(name: str) -> Callable[[Problem, torch.device], Reason]:
    """What a pinned CUDA kernel refuses (it raises "No available kernel" at the call otherwise),
    from torch's SDPA constraints and a run on an H100 (torch 2.11)."""

    def why_unsupported(problem: Problem, device: torch.device) -> Reason:
        if device.type != "cuda":
            return None
        if name in ("sdpa-flash", "sdpa-cudnn") and problem.dtype not in ("float16", "bfloat16"):
            return (f"{name} on CUDA takes float16 or bfloat16 (got {problem.dtype}); "
                    "sdpa-efficient and sdpa-math take float32")
        if name == "sdpa-efficient" and problem.groups > 1:
            return "sdpa-efficient has no enable_gqa (K/V heads must equal query heads); sdpa-flash and sdpa-math do"
        if name == "sdpa-cudnn" and problem.causal and problem.seq_q > problem.seq_k:
            return (
                "sdpa-cudnn's bottom-right causal mask with Lq > Lk disagrees with the reference "
                "(rows that see no key: it does not return the reference's zeros there)"
            )
        return None

    return why_unsupported


def sdpa_call(problem: Problem, *, mask: torch.Tensor | None = None):
    """Keyword arguments of F.scaled_dot_product_attention for this problem (bottom-right causal)."""
    kwargs: dict = {"enable_gqa": problem.groups > 1}
    if mask is not None:
        kwargs["attn_mask"] = mask
    elif problem.causal and problem.seq_q == problem.seq_k:
        kwargs["is_causal"] = True
    elif problem.causal:
        from torch.nn.attention.bias import causal_lower_right

        kwargs["attn_mask"] = causal_lower_right(problem.seq_q, problem.seq_k)
    return kwargs


def mask_workspace(p: Problem) -> float:
    """A dense (Lq, Lk) additive mask in the inputs' dtype, made from a bool mask on each call."""
    return float(p.seq_q * p.seq_k * p.itemsize)


def sdpa_backends(
    mask_fn: Callable[[Problem, torch.device], torch.Tensor | None] | None = None,
    names: tuple[str, ...] = tuple(SDPA_KERNELS),
    bool_mask: bool = True,
) -> tuple[Backend, ...]:
    """torch SDPA, free to choose its kernel (`sdpa`) or pinned to one (`sdpa-flash`, ...).

    mask_fn builds an explicit (Lq, Lk) mask in setup (sparse patterns: bool; biases: additive,
    bool_mask=False); None for plain. A masked call is still a fused kernel (no per-head scores;
    measured on the CPU), but SDPA turns a bool mask into an additive one of the inputs' dtype on
    every call: its workspace, Lq·Lk elements."""
    out = []
    for name in names:

        def build(problem: Problem, device: torch.device, _kernel=SDPA_KERNELS[name]) -> Fn:
            mask = mask_fn(problem, device) if mask_fn else None
            kwargs = sdpa_call(problem, mask=mask)
            if _kernel is None:

                def sdpa(q, k, v):
                    return F.scaled_dot_product_attention(q, k, v, **kwargs)

                return sdpa
            from torch.nn.attention import SDPBackend, sdpa_kernel

            pinned = getattr(SDPBackend, _kernel)

            def sdpa_pinned(q, k, v):
                with sdpa_kernel(pinned):
                    return F.scaled_dot_product_attention(q, k, v, **kwargs)

            return sdpa_pinned

        desc = "torch scaled_dot_product_attention" + (
            f", pinned to {SDPA_KERNELS[name]}" if SDPA_KERNELS[name] else ", kernel chosen by torch"
        )
        out.append(
            Backend(
                name,
                build,
                desc,
                why_unavailable=_sdpa_available(name),
                why_unsupported=_sdpa_supports(name),
                materializes=name == "sdpa-math",
                workspace=mask_workspace if mask_fn is not None and bool_mask else None,
                memory=None if name == "sdpa-math" or mask_fn is not None else "O(L)",
            )
        )
    return tuple(out)
