"""Logit soft-capping and attention sinks: score modifiers of the exact family and sliding_window.

Shape legend: q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D); scores s (B, Hq, Lq, Lk), s = q·kᵀ/√D.

Soft-capping (Gemma 2, Google 2024; `softcap`, a float, 0 = off). Before the mask and softmax

    s ← cap · tanh(s / cap)                      every score then lies in (-cap, cap)

Gemma-2 uses cap = 50 on attention logits. Cost: 3 operations per attended score (s/cap, tanh,
cap·t); `softcap_flops` counts them, tanh as one operation (one special-function instruction on a
GPU, where it runs at a fraction of the tensor-core rate: soft-capping costs more time than its
FLOPs say, which is what a benchmark shows). The softmax's own exp is not counted (the
FlashAttention convention attention_flops keeps), so a soft-capped record carries 3/(4·D) more
FLOPs than the plain one: 0.6 % at D = 128.

Attention sinks (StreamingLLM, Xiao et al. 2023; `sinks` = N, an int, 0 = off; sliding_window
only). Every query also sees the first N keys besides its window, still only keys j <= i' when
causal (i' = i + Lk - Lq):   visible(i, j) = band(i', j) or j < N   [and j <= i'].
StreamingLLM's `recent_size` counts the keys before the current token: its cache (start_size N,
recent_size r) is attnbench's sinks = N, window = r + 1 (transformers' sliding_window w = window w).
The sink keys are attended pairs: FLOPs count them (sliding_window_pairs); bytes already read all
of K and V once.

Learned sink logit (`sink_logit` = "learned", "off" by default; sliding_window only): one logit σ_h
per query head joins the softmax denominator, as the sink parameters of recent open-weight models
(e.g. gpt-oss) do:

    out_i = Σ_j e^(s_ij) v_j / (e^(σ_h) + Σ_j e^(s_ij))     (a key of logit σ_h whose value is 0)

so a head can attend "nowhere". A benchmark has no trained model: σ_h = SINK_LO + (SINK_HI -
SINK_LO)·h/(Hq - 1), deterministic, built in setup (`sink_logits`), from a near-negligible sink
(σ = 0 against a 256-key window) to a sizeable one (σ = 4, e^4 ≈ 55 keys' worth at s ≈ 0). The
logit is not soft-capped. A row that sees no key gives 0 (all its mass goes to the sink).
Extra cost: one exp and add per query row (not counted) and Hq fp32 logits read (counted in bytes).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from attnbench.core.problem import Problem
from attnbench.variants.backends.flex import (
    BLOCK_SIZE,
    ScoreMod,
    and_masks,
    causal_mod,
    compiled_block_mask,
    compiled_flex,
)
from attnbench.variants.base import Backend, Fn, Reason

SINK_LOGITS = ("off", "learned")
SINK_LO, SINK_HI = 0.0, 4.0


# ---------------------------------------------------------------- parameters
def softcap_of(p: Problem) -> float:
    """The problem's soft-cap (0.0 when off or not declared)."""
    return float(p.param("softcap") or 0.0)


def learned_sink(p: Problem) -> bool:
    return p.param("sink_logit", "off") == "learned"


def check_softcap(p: Problem) -> Reason:
    cap = p.param("softcap", 0.0)
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 <= cap < float("inf"):
        return f"softcap must be a finite number >= 0 (0 = off; got {cap!r})"
    return None


def check_sinks(p: Problem) -> Reason:
    n = p.param("sinks", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return f"sinks must be an integer >= 0 (0 = off; got {n!r})"
    if p.param("sink_logit", "off") not in SINK_LOGITS:
        return f"unknown sink_logit {p.param('sink_logit')!r}; accepted: {', '.join(SINK_LOGITS)}"
    return None


def sink_logits(heads: int, device=None) -> torch.Tensor:
    """(Hq,) fp32 σ_h: SINK_LO .. SINK_HI evenly over the query heads (one head: SINK_LO)."""
    if heads == 1:
        return torch.full((1,), SINK_LO, device=device)
    return torch.linspace(SINK_LO, SINK_HI, heads, device=device)


def sink_logits_of(p: Problem, device=None) -> torch.Tensor | None:
    return sink_logits(p.heads, device) if learned_sink(p) else None


# ---------------------------------------------------------------- math and cost
def cap_scores(scores: torch.Tensor, cap: float) -> torch.Tensor:
    """cap·tanh(scores / cap); cap = 0: unchanged."""
    return scores if not cap else cap * torch.tanh(scores / cap)


def softcap_flops(p: Problem, pairs: int | None = None) -> float:
    """3 operations (s/cap, tanh, cap·t) per attended score: 3·B·Hq·pairs; 0 when off."""
    if not softcap_of(p):
        return 0.0
    pairs = p.attended_pairs() if pairs is None else pairs
    return 3.0 * p.batch * p.heads * pairs


def sink_logit_bytes(p: Problem) -> float:
    """The Hq fp32 sink logits read once (0 when off)."""
    return 4.0 * p.heads if learned_sink(p) else 0.0


# ---------------------------------------------------------------- backends
def refuse(backend: Backend, why: Callable[[Problem], Reason]) -> Backend:
    """`backend` with `why(problem)` checked before its own supports: a parameter it cannot
    honour becomes `unsupported` with the reason, never silently ignored."""
    own = backend.why_unsupported

    def why_unsupported(p: Problem, device: torch.device) -> Reason:
        return why(p) or own(p, device)

    return replace(backend, why_unsupported=why_unsupported)


def no_softcap(what: str, use: str = "eager or flex") -> Callable[[Problem], Reason]:
    def why(p: Problem) -> Reason:
        return f"{what} has no logit soft-cap (softcap={softcap_of(p):g}); use {use}" if softcap_of(p) else None

    return why


def no_sinks(what: str, use: str) -> Callable[[Problem], Reason]:
    def why(p: Problem) -> Reason:
        if p.param("sinks", 0):
            return f"{what} has no sink tokens (sinks={p.param('sinks')}); use {use}"
        return None

    return why


def no_sink_logit(what: str, use: str = "eager, flex or triton") -> Callable[[Problem], Reason]:
    def why(p: Problem) -> Reason:
        if learned_sink(p):
            return f"{what} has no learned sink logit (a term in the softmax denominator); use {use}"
        return None

    return why


def all_of(*whys: Callable[[Problem], Reason]) -> Callable[[Problem], Reason]:
    def why(p: Problem) -> Reason:
        return next((r for w in whys if (r := w(p))), None)

    return why


def softcap_mod(p: Problem, device: torch.device) -> ScoreMod | None:
    """FlexAttention score_mod cap·tanh(score / cap) (flex's score is already scaled by 1/√D)."""
    cap = softcap_of(p)
    if not cap:
        return None

    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)

    return softcap


def with_flex_sink_logit(base: Backend, mask_mod: Callable[[Problem], Callable]) -> Backend:
    """The flex backend `base` (built with mask_mod and softcap_mod), which with
    sink_logit=learned appends one key per call instead: index Lk, value 0, score σ_h, visible to
    every query (compiled flex on CPU cannot return the log-sum-exp, so the sink cannot be folded
    in afterwards). Cost: K and V are copied once per call (torch.cat), O(B·Hkv·Lk·D), timed."""

    def build(problem: Problem, device: torch.device) -> Fn:
        if not learned_sink(problem):
            return base.build(problem, device)
        lk, cap = problem.seq_k, softcap_of(problem)
        inner = and_masks(mask_mod(problem), causal_mod(problem) if problem.causal else None)
        sink = sink_logits(problem.heads, device)

        def with_sink_key(b, h, q_idx, kv_idx):
            return (kv_idx == lk) | inner(b, h, q_idx, kv_idx)

        def sink_score(score, b, h, q_idx, kv_idx):
            if cap:
                score = cap * torch.tanh(score / cap)
            return torch.where(kv_idx == lk, sink[h], score)

        block_mask = compiled_block_mask()(with_sink_key, B=None, H=None, Q_LEN=problem.seq_q, KV_LEN=lk + 1,
                                           device=device, BLOCK_SIZE=problem.param("block_size", BLOCK_SIZE))
        pad = torch.zeros(problem.batch, problem.kv_heads, 1, problem.head_dim, device=device,
                          dtype=problem.torch_dtype)
        attend, gqa = compiled_flex(), problem.groups > 1

        def flex_sink(q, k, v):
            return attend(q, torch.cat([k, pad], 2), torch.cat([v, pad], 2), score_mod=sink_score,
                          block_mask=block_mask, enable_gqa=gqa)

        return flex_sink

    return replace(base, build=build)
