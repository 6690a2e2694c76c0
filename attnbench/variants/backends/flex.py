"""FlexAttention backends: a compiled ``flex_attention`` with a cached ``BlockMask``.

Mask and score modifiers are small named closures (attention-gym style) that compose with
:func:`and_masks`. The block mask is built in setup (``create_block_mask(..., _compile=True)``,
so the dense L×L mask is never materialised) and reported as setup time, not as the call.

Measured here (torch 2.13.0 CPU build, 2 cores): the compiled CPU kernel returns wrong values
when Lk is not a multiple of its 128-key block, whatever Lq, with or without GQA (max abs error
0.2 to NaN against an fp64 softmax at Lk = 40 or 200; exact at 128 and 1024), and which rows go
wrong changes between compiles. Every run measures each case's error against the fp64 reference,
so such records show it in `error`; `recommend` then leaves them out by its error budget.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason

MaskMod = Callable  # (b, h, q_idx, kv_idx) -> bool tensor
ScoreMod = Callable  # (score, b, h, q_idx, kv_idx) -> score


def causal_mod(problem: Problem) -> MaskMod:
    offset = problem.seq_k - problem.seq_q

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset  # bottom-right aligned

    return causal


def and_masks(*mods: MaskMod | None) -> MaskMod | None:
    mods = tuple(m for m in mods if m is not None)
    if not mods:
        return None
    if len(mods) == 1:
        return mods[0]
    from torch.nn.attention.flex_attention import and_masks as _and

    return _and(*mods)


RECOMPILE_LIMIT = 1024


def no_silent_eager_fallback() -> None:
    """Every new shape or mask compiles anew (dynamic=False). Past dynamo's recompile limit
    (8 by default) torch.compile silently runs flex_attention eagerly, materialising the L×L
    scores (orders of magnitude slower and larger at long L), and every backward after it runs the
    eager path too. The limit is raised for the worker's many shapes, and hitting it is made an
    error, recorded with its reason. Automatic dynamic shapes are turned off for the process: a
    function compiled with torch's default (transformers' flex_attention, for hf-flex) was otherwise
    recompiled symbolically once a second shape came, and Inductor's C++ for that failed to build
    on this CPU (torch 2.13: "'cur_kvSplitSize2' was not declared"), so a case's fate depended on the
    cases the worker ran before it; off, each shape compiles for itself, as in a fresh process."""
    cfg = torch._dynamo.config
    if hasattr(cfg, "automatic_dynamic_shapes"):
        cfg.automatic_dynamic_shapes = False
    for limit in ("recompile_limit", "cache_size_limit"):  # the name changed in torch 2.6
        if hasattr(cfg, limit):
            setattr(cfg, limit, max(getattr(cfg, limit), RECOMPILE_LIMIT))
            break
    for total in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, total):
            setattr(cfg, total, max(getattr(cfg, total), 4 * RECOMPILE_LIMIT))
            break
    for fail in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
        if hasattr(cfg, fail):
            setattr(cfg, fail, True)
            break


@functools.cache
def compiled_block_mask():
    """create_block_mask compiled, so the dense L×L mask is never materialised. Static shapes
    (dynamic=False), like compiled_flex: after a few shapes in one process torch's automatic
    dynamic shapes recompiled it symbolically, and Inductor's C++ code for that failed to compile
    (torch 2.13: "operands to ?: have different types VecMask<long, 2> and VecMask<float, 1>"),
    so whether a flex case ran depended on the cases run before it in the same process."""
    from torch.nn.attention.flex_attention import create_block_mask

    no_silent_eager_fallback()
    return torch.compile(create_block_mask, dynamic=False)


def full_block_mask(seq_q: int, seq_k: int, block_size: int, device: torch.device):
    """A BlockMask in which every tile is full (nothing masked), built directly from its block
    counts: O((L/block)²) small integers, no mask function evaluated, nothing compiled. FlexAttention
    is always given one: called without a block mask, its compiled CPU kernel held memory growing
    as B·H·Lq·Lk (about a byte per score: 138 MiB at L = 4k, H = 8, against 8 MiB with this mask,
    measured with torch 2.13), which made flex's O(L) memory claim false on the CPU."""
    from torch.nn.attention.flex_attention import BlockMask

    nq, nk = -(-seq_q // block_size), -(-seq_k // block_size)
    ints = dict(dtype=torch.int32, device=device)
    return BlockMask.from_kv_blocks(
        torch.zeros(1, 1, nq, **ints), torch.zeros(1, 1, nq, nk, **ints),  # no partial tiles
        torch.full((1, 1, nq), nk, **ints), torch.arange(nk, **ints).expand(1, 1, nq, nk).contiguous(),
        BLOCK_SIZE=block_size, seq_lengths=(seq_q, seq_k))


@functools.cache
def compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    no_silent_eager_fallback()
    return torch.compile(flex_attention, dynamic=False)


def _flex_available(device: torch.device) -> Reason:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return "this torch has no FlexAttention (needs torch >= 2.5)"
    return None


def _flex_supports(problem: Problem, device: torch.device) -> Reason:
    if problem.needs_grad and device.type == "cpu":
        return "FlexAttention has no backward on CPU"
    if problem.head_dim < 16 or problem.head_dim & (problem.head_dim - 1):
        return f"FlexAttention needs a power-of-two head_dim >= 16 (got {problem.head_dim})"
    size = problem.param("block_size", BLOCK_SIZE)
    if size < 16 or size & (size - 1):
        return f"bad block_size {size}; accepted: a power of two >= 16 (FlexAttention's default: {BLOCK_SIZE})"
    return None


# The BlockMask's tile (queries and keys). FlexAttention's default; a narrow pattern wastes less
# of its partial tiles with smaller ones: a causal 256-wide window at L = 4k..8k, fp32, on this
# CPU took 14 % less time with 64 (38.5 vs 44.9 ms). On a GPU the kernel's own tiles must divide it.
BLOCK_SIZE = 128


def flex_backend(mask_mod: Callable[[Problem], MaskMod | None] | None = None,
                 score_mod: Callable[[Problem, torch.device], ScoreMod | None] | None = None,
                 description: str = "compiled FlexAttention with a cached BlockMask") -> Backend:
    """mask_mod(problem) and score_mod(problem, device) return the modifiers for one problem;
    the causal mask is added from problem.causal."""

    def build(problem: Problem, device: torch.device) -> Fn:
        mod = and_masks(mask_mod(problem) if mask_mod else None,
                        causal_mod(problem) if problem.causal else None)
        size = problem.param("block_size", BLOCK_SIZE)
        if mod is not None:
            block_mask = compiled_block_mask()(mod, B=None, H=None, Q_LEN=problem.seq_q, KV_LEN=problem.seq_k,
                                               device=device, BLOCK_SIZE=size)
        else:
            block_mask = full_block_mask(problem.seq_q, problem.seq_k, size, device)
        smod = score_mod(problem, device) if score_mod else None
        attend = compiled_flex()
        gqa = problem.groups > 1

        def flex(q, k, v):
            return attend(q, k, v, score_mod=smod, block_mask=block_mask, enable_gqa=gqa)

        return flex

    return Backend("flex", build, description, why_unavailable=_flex_available, why_unsupported=_flex_supports,
                   compiles=True,
                   params={"block_size": BLOCK_SIZE}, memory="O(L)" if mask_mod is None else None)
