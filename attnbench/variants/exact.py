"""Exact softmax attention: MHA, causal, cross, MQA and GQA (Vaswani et al. 2017;
MQA: Shazeer 2019; GQA: Ainslie et al. 2023).

    out = softmax(Q Kᵀ / √D [+ causal mask]) V        q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D)

`softcap` (float, 0 = off; Gemma-2): the scores become cap·tanh(s/cap) before the mask and
softmax (variants/modifiers.py: the math, the 3 extra operations per score in the FLOPs); eager,
grouped, flex and triton do it, SDPA cannot and is `unsupported` with the reason.

MQA shares one K/V head among all query heads; GQA shares each K/V head among G = Hq/Hkv
query heads. The `eager` backend repeats K/V as naive code does; `sdpa` and `flex` read the
shared heads directly (enable_gqa). In decode mode (Lq = 1) what grows is the KV cache read:
2·B·Hkv·Lk·D·itemsize bytes, which is where MQA/GQA pay off.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from attnbench.core.problem import Problem
from attnbench.variants.backends import triton
from attnbench.variants.backends.fault import fault_backends
from attnbench.variants.backends.flex import flex_backend
from attnbench.variants.backends.hf import hf_backends
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.modifiers import (
    cap_scores,
    check_softcap,
    no_softcap,
    refuse,
    softcap_flops,
    softcap_mod,
    softcap_of,
)
from attnbench.variants.patterns import causal_mask
from attnbench.variants.scaling import with_scale
from attnbench.variants.shared import (
    attention_flops,
    check_heads,
    eager_backend,
    exact_reference,
    fill_defaults,
    io_bytes,
    sdpa_backends,
    softmax_attention,
)

# Decode scores (few query rows per KV head) come from one of two products: Q·Kᵀ, or K·Qᵀ
# transposed (a tall, skinny product that reads K row by row). Which one the CPU BLAS runs at
# memory bandwidth depends on the machine: 32 one-row heads at Lk = 32k, D = 128 took 18 ms as
# K·Qᵀ and 43 ms as Q·Kᵀ on one host here, 55 ms and 25 ms on another (a later one, AVX-512).
# `scores = auto` times both at setup on the problem's shapes (Lk capped) and keeps the faster.
FEW_ROWS = 64  # auto times the two only up to this many rows per KV head; Q·Kᵀ beyond
SCORES = ("auto", "qk", "kq")
_CALIBRATION_ROWS = 8192


def grouped_attention(q, k, v, problem: Problem, scores: str = "qk") -> torch.Tensor:
    """GQA without repeating K/V: the G query heads that share a KV head are stacked into one
    (G·Lq)-row matrix, so each KV head's K and V are read once, by one matmul each.

    Query head h uses KV head h // G (the repeat_interleave convention), so the contiguous
    (B, Hq, Lq, D) tensor reshapes for free to (B, Hkv, G·Lq, D). scores: "qk" computes Q·Kᵀ,
    "kq" computes K·Qᵀ and transposes the small (G·Lq)×Lk result."""
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    rows = (hq // hkv) * lq
    qg = (q * (1.0 / math.sqrt(d))).reshape(b, hkv, rows, d)  # (B, Hkv, G·Lq, D), scaled
    s = cap_scores(_scores(qg, k, scores), softcap_of(problem))  # (B, Hkv, G·Lq, Lk): K read once per KV head
    if problem.causal:
        allowed = causal_mask(lq, lk, q.device).repeat(hq // hkv, 1)  # (G·Lq, Lk)
        s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1, dtype=torch.float32)
    if problem.causal:  # rows with no visible key (Lq > Lk) are NaN: make them 0
        p = p.nan_to_num(0.0)
    return torch.matmul(p.to(v.dtype), v).reshape(b, hq, lq, d)  # (B, Hq, Lq, D)


def _scores(qg: torch.Tensor, k: torch.Tensor, scores: str) -> torch.Tensor:
    if scores == "kq":
        return torch.matmul(k, qg.transpose(-2, -1)).transpose(-2, -1).contiguous()
    return torch.matmul(qg, k.transpose(-2, -1))


def faster_scores(problem: Problem, device: torch.device, calls: int = 5) -> str:
    """"qk" or "kq", whichever computes this problem's scores faster here: both are run on random
    tensors of its shapes (Lk capped at 8192), best of `calls` each, after one warm-up call."""
    rows = problem.groups * problem.seq_q
    g = torch.Generator(device=device).manual_seed(0)
    shape = (problem.batch, problem.kv_heads)
    qg = torch.randn(*shape, rows, problem.head_dim, generator=g, device=device, dtype=problem.torch_dtype)
    k = torch.randn(*shape, min(problem.seq_k, _CALIBRATION_ROWS), problem.head_dim, generator=g,
                    device=device, dtype=problem.torch_dtype)

    def best(scores: str) -> float:
        times = []
        for _ in range(calls + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            _scores(qg, k, scores)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return min(times[1:])

    return "kq" if best("kq") < best("qk") else "qk"


def _scores_supports(p: Problem, device: torch.device) -> Reason:
    if p.param("scores", "auto") not in SCORES:
        return f"unknown scores '{p.param('scores')}'; accepted: {', '.join(SCORES)}"
    return None


def _grouped_backend() -> Backend:
    def build(problem: Problem, device: torch.device) -> Fn:
        scores = problem.param("scores", "auto")
        if scores == "auto":
            few = problem.groups * problem.seq_q <= FEW_ROWS
            scores = faster_scores(problem, device) if few else "qk"

        def grouped(q, k, v):
            return grouped_attention(q, k, v, problem, scores)

        return grouped

    return Backend("grouped", build, "query heads of a KV head in one matmul: K/V read once, never repeated; "
                   "decode scores as Q·Kᵀ or K·Qᵀ, whichever runs faster here (timed at setup; "
                   "--param scores=qk|kq pins one)",
                   why_unsupported=_scores_supports, materializes=True, params={"scores": "auto"})


def _backends():
    return (eager_backend(lambda q, k, v, p: softmax_attention(q, k, v, causal=p.causal, softcap=softcap_of(p))),
            *(refuse(b, no_softcap("SDPA", "eager, grouped, flex or triton")) for b in sdpa_backends()),
            flex_backend(score_mod=softcap_mod), _grouped_backend(), triton.flash_backend())


def _exact(name: str, description: str, resolve: Callable[[Problem], Problem],
           why_unsupported: Callable[[Problem], Reason] = check_heads, time: str = "O(L²)",
           extra: tuple[Backend, ...] = ()) -> Variant:
    return with_scale(Variant(
        name=name, family="exact", description=description, time=time, memory="O(L²)", oracle="softmax",
        decode_check=True,
        reference=exact_reference, flops=lambda p: attention_flops(p) + softcap_flops(p), bytes=io_bytes,
        backends=_backends() + tuple(refuse(b, no_softcap("the fault backend (plain SDPA)")) for b in extra),
        resolve=resolve, why_unsupported=lambda p: check_softcap(p) or why_unsupported(p), options={"softcap": 0.0}),
        native=hf_backends())


def _mha_supports(p: Problem) -> Reason:
    if p.kv_heads != p.heads:
        return f"mha needs kv_heads == heads (got {p.kv_heads} of {p.heads}); use gqa or mqa"
    return None


def _mqa_supports(p: Problem) -> Reason:
    return None if p.kv_heads == 1 else f"mqa needs kv_heads == 1 (got {p.kv_heads}); use gqa"


def _causal_supports(p: Problem) -> Reason:
    return check_heads(p) or (None if p.causal else "the causal variant is always causal")


def _cross_resolve(p: Problem) -> Problem:
    # Cross attention: queries attend to another sequence; by default half as long as Lq
    # (e.g. a decoder over an encoded prompt). --kv-seq sets Lk explicitly.
    return fill_defaults(p, seq_k=max(1, p.seq_q // 2))


def _gqa_resolve(p: Problem) -> Problem:
    # default: 4 query heads per KV head (Llama-2/3 70B style), at least one KV head
    return fill_defaults(p, kv_heads=max(1, p.heads // 4))


def _gqa_supports(p: Problem) -> Reason:
    return check_heads(p)


MHA = _exact("mha", "multi-head attention, one K/V head per query head", fill_defaults, _mha_supports,
             extra=fault_backends())
CAUSAL = _exact("causal", "decoder self-attention with a bottom-right causal mask",
                lambda p: fill_defaults(p, causal=True), _causal_supports, time="O(L²/2)")
CROSS = _exact("cross", "cross attention, Lq != Lk (default Lk = Lq/2; set --kv-seq)", _cross_resolve)
MQA = _exact("mqa", "multi-query attention, one K/V head shared by all query heads",
             lambda p: fill_defaults(p, kv_heads=1), _mqa_supports)
GQA = _exact("gqa", "grouped-query attention, G query heads share a K/V head (default G=4)",
             _gqa_resolve, _gqa_supports)

VARIANTS = (MHA, CAUSAL, CROSS, MQA, GQA)
