"""A model's own softmax scale (`scale`, a float; 0 = the variant's default) on any exact-softmax variant.

Attention computes softmax(s · q·kᵀ) with s = 1/√D by default (MLA: 1/√(qk_nope + qk_rope)). Models
change s: Gemma-2/3 use `query_pre_attn_scalar`^-½ (Gemma-2-27B: 144^-½, not 128^-½), DeepSeek-V3
multiplies 1/√192 by YaRN's mscale² (≈ 1.874 at factor 40). `with_scale(variant, default)` gives
the variant a `scale` option that every backend and the reference honour the same way: the queries
are multiplied by c = scale / default before the variant's own computation, since

    softmax(scale · q·kᵀ) = softmax(default · (c·q)·kᵀ)      (and the soft-cap, which applies to the
                                                               scaled score, sees the same value)

Honest limits: the multiply runs inside the timed call (one elementwise pass over Q, B·H·Lq·D
operations, not counted in FLOPs); in bfloat16/float16 c·q is rounded once more than a kernel that
folds the scale into its own multiply (≤ one unit of roundoff per query element). scale = 0 (the
off value) leaves the variant untouched: records of plain attention do not change.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import torch

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason, Variant

OFF = 0.0


def scale_of(p: Problem) -> float:
    """The problem's `scale` (0.0: the variant's default)."""
    return float(p.param("scale") or OFF)


def default_scale(p: Problem) -> float:
    """1/√D, the softmax scale of plain attention."""
    return 1.0 / math.sqrt(p.head_dim)


def check_scale(p: Problem) -> Reason:
    s = p.param("scale", OFF)
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < float("inf"):
        return f"scale must be a finite number > 0 (0 = the variant's default 1/√D; got {s!r})"
    return None


def _factor(p: Problem, default: Callable[[Problem], float]) -> float | None:
    s = scale_of(p)
    return None if not s else s / default(p)


def _scaled_backend(b: Backend, default: Callable[[Problem], float]) -> Backend:
    build = b.build

    def scaled_build(p: Problem, device: torch.device) -> Fn:
        fn, c = build(p, device), _factor(p, default)
        if c is None:
            return fn
        return lambda q, k, v: fn(q * c, k, v)

    return replace(b, build=scaled_build)


def with_scale(variant: Variant, default: Callable[[Problem], float] = default_scale,
               native: tuple[Backend, ...] = ()) -> Variant:
    """`variant` with the `scale` option on its reference and every backend (see the module doc);
    `native` backends, appended, pass `scale` to their own call (transformers' functions take
    `scaling`) and are not wrapped."""
    reference, why_unsupported = variant.reference, variant.why_unsupported

    def scaled_reference(q, k, v, p: Problem):
        c = _factor(p, default)
        return reference(q if c is None else q * c, k, v, p)

    return replace(variant, reference=scaled_reference,
                   backends=tuple(_scaled_backend(b, default) for b in variant.backends) + native,
                   why_unsupported=lambda p: check_scale(p) or why_unsupported(p),
                   options={**variant.options, "scale": OFF})
