"""Sparse attention patterns: sliding window, Longformer, BigBird and the Sparse Transformer.

Each variant is exact softmax attention restricted to a pattern (attnbench/patterns.py defines the
patterns once for every backend):

    out = softmax(Q Kᵀ / √D, masked to the pattern [and the causal mask]) V

| variant        | pattern                                                   | paper                  |
|----------------|-----------------------------------------------------------|------------------------|
| sliding_window | tokens with |i' - j| < window (causal: the last `window`) | Beltagy et al. 2020; Mistral 2023 |
| longformer     | band of blocks (optionally dilated) + global blocks       | Beltagy et al. 2020    |
| bigbird        | window + global + random blocks (seeded)                  | Zaheer et al. 2020     |
| strided        | Sparse Transformer "strided" or "fixed", stride ≈ √L      | Child et al. 2019      |

Defaults: sliding_window window=256; longformer window=512 (tokens, 256 each side as in the
paper, rounded to blocks), global_tokens=64 (one block), dilation=1, block=64; bigbird block=64,
window_blocks=3, global_blocks=2, random_blocks=3, seed=0 (BigBird-ITC's BERT-base setting);
strided pattern="strided", stride=0 (auto: ≈ √L rounded to blocks), summary=1 (fixed), block=64.

Backends: `eager` is the dense masked softmax (the reference, O(L²) memory); `sdpa` passes an
explicit (Lq, Lk) bool mask built in setup — it shows what a dense mask costs; `flex` is
FlexAttention with the pattern's mask_mod (its BlockMask skips empty tiles); `chunked`
(sliding window only) is blocked local attention in plain PyTorch, O(L·w) time and memory
(measured on CPU, flex is ~2× faster in the forward, so it comes first; chunked has a backward).
FLOPs count only attended pairs: 4·B·Hq·D·pairs.

sliding_window also takes `sinks` (the first N keys seen by every query, StreamingLLM),
`sink_logit` ("learned": a per-head logit in the softmax denominator) and `softcap` (Gemma-2's
cap·tanh(s/cap)); the math and costs are in variants/modifiers.py. eager, flex and triton do all
three; chunked does softcap only, sdpa sinks only (a mask); the others are `unsupported` with why.

Honest limits: the block patterns are defined for self-attention (Lq == Lk), so cross attention
and decode are unsupported; `sdpa` and `eager` still do the full L² work (masking is not skipping).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from attnbench.core.problem import Problem
from attnbench.variants import modifiers as mod
from attnbench.variants import patterns as pat
from attnbench.variants.backends import peers, triton
from attnbench.variants.backends.flex import flex_backend
from attnbench.variants.backends.hf import hf_backends
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.scaling import with_scale
from attnbench.variants.shared import (
    attention_flops,
    check_heads,
    eager_backend,
    fill_defaults,
    io_bytes,
    sdpa_backends,
    softmax_attention,
)


def _flex_with_device(make_mod) -> Backend:
    """flex_backend whose mask_mod(problem, device) may capture device tensors (layouts)."""
    base = flex_backend()

    def build(problem: Problem, device: torch.device) -> Fn:
        return flex_backend(mask_mod=lambda p: make_mod(p, device)).build(problem, device)

    return replace(base, build=build, description="compiled FlexAttention, pattern as mask_mod, cached BlockMask")


# ================================================================ sliding window (token level)


def sliding_window_attention(q, k, v, problem: Problem) -> torch.Tensor:
    """Reference: dense scores, keys farther than `window` from the query masked out but the
    first `sinks` kept; soft-capped scores and the learned sink logit when set (modifiers.py)."""
    lq, lk, w = q.shape[-2], k.shape[-2], problem.param("window")
    band = pat.sliding_window_mask(lq, lk, w, causal=False, device=q.device, sinks=problem.param("sinks", 0))
    return softmax_attention(q, k, v, mask=band, causal=problem.causal, softcap=mod.softcap_of(problem),
                             sink=mod.sink_logits_of(problem, q.device))


def sliding_window_pairs(p: Problem) -> int:
    """Row i' (= i + Lk - Lq) sees keys lo..hi with lo = max(0, i' - w + 1) and
    hi = min(Lk - 1, i' + w - 1), or hi = i' when causal, plus the sink keys 0..s (s = N - 1,
    s <= Lk - 1, s <= i' when causal) that are not in lo..hi: sum of |[lo, hi] ∪ [0, s]|."""
    w, n = p.param("window"), p.param("sinks", 0)
    qpos = torch.arange(p.seq_q, dtype=torch.int64) + (p.seq_k - p.seq_q)
    lo = (qpos - w + 1).clamp(min=0)
    hi = qpos if p.causal else (qpos + w - 1).clamp(max=p.seq_k - 1)
    band = (hi - lo + 1).clamp(min=0)
    s = torch.full_like(qpos, min(n, p.seq_k) - 1)
    if p.causal:
        s = torch.minimum(s, qpos)
    both = (torch.minimum(s, hi) - lo + 1).clamp(min=0)  # sink keys already in the band
    return int((band + (s + 1).clamp(min=0) - both).sum())


@dataclass(frozen=True)
class ChunkPlan:
    """Setup of chunked local attention: query chunk c (C queries) reads the padded keys
    [c·C, c·C + span), span = C + w - 1 (causal) or C + 2w - 2 (both sides)."""

    start: int  # keys before it are seen by no query: dropped
    left: int  # zero keys padded on the left
    right: int  # and on the right
    chunk: int  # C
    span: int
    n_chunks: int
    blocked: torch.Tensor  # (n_chunks, C, span) bool, True = masked out


def chunk_shape(lq: int, lk: int, window: int, causal: bool, chunk: int | None = None) -> tuple[int, int, int]:
    """(C, span, n_chunks) of chunked local attention."""
    w = min(window, lk)  # |i' - j| <= Lk - 1 < w: a wider window changes nothing
    # Chunk C = w/2 (at least min(w, 32)): a chunk computes C·span scores for C·w (causal) useful
    # ones; C = w wastes 2×, smaller C more, smaller matmuls. Measured at L=4k, w=256: C=128 best.
    c = min(chunk or max(w // 2, min(w, 32)), lq)
    return c, (c + w - 1 if causal else c + 2 * w - 2), -(-lq // c)


def chunked_workspace(p: Problem) -> float:
    """One call beyond its output: fp32 scores and probabilities of every chunk (n·C × span per
    head), the padded copies of K and V, the scaled padded queries and the output's reshape."""
    c, span, n = chunk_shape(p.seq_q, p.seq_k, int(p.param("window")), p.causal)
    rows = p.batch * p.heads * n * c
    padded_kv = 2 * p.batch * p.kv_heads * (n * c + span) * p.head_dim
    return 2 * 4.0 * rows * span + (padded_kv + 2 * rows * p.head_dim) * p.itemsize


def chunk_plan(lq: int, lk: int, window: int, causal: bool, device, chunk: int | None = None) -> ChunkPlan:
    w = min(window, lk)
    c, span, n = chunk_shape(lq, lk, window, causal, chunk)
    start = max(0, (lk - lq) - w + 1)  # the first query (at i' = Lk - Lq) sees j > i' - w
    off, lk2 = lk - lq - start, lk - start  # off in [0, w - 1]
    left = w - 1 - off  # chunk 0's first needed key (j = off - w + 1) lands at padded index 0
    right = (n - 1) * c + span - left - lk2
    i = (torch.arange(n, device=device)[:, None] * c + torch.arange(c, device=device))[:, :, None]  # (n, C, 1)
    j = torch.arange(n, device=device)[:, None, None] * c + torch.arange(span, device=device) - left  # (n, 1, span)
    ok = (j >= 0) & (j < lk2) & ((i + off - j).abs() < w)
    if causal:
        ok &= j <= i + off
    ok |= i >= lq  # padding queries read every key (no NaN; their rows are dropped)
    return ChunkPlan(start, left, right, c, span, n, ~ok)


def chunked_sliding_window(q, k, v, plan: ChunkPlan, softcap: float = 0.0) -> torch.Tensor:
    """Blocked local attention: each query chunk attends only to the keys its window can reach,
    taken as strided views (unfold) of the padded K and V; O(L·w) time and memory."""
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    g, c, n, span = hq // hkv, plan.chunk, plan.n_chunks, plan.span
    pad = (0, 0, plan.left, plan.right)
    kw = F.pad(k[..., plan.start :, :], pad).unfold(2, span, c)  # (B, Hkv, n, D, span), a view
    vw = F.pad(v[..., plan.start :, :], pad).unfold(2, span, c)  # (B, Hkv, n, D, span)
    qc = F.pad(q * (1.0 / math.sqrt(d)), (0, 0, 0, n * c - lq))  # (B, Hq, n·C, D), scaled once
    qc = qc.view(b, hkv, g, n, c, d).transpose(2, 3).reshape(b, hkv, n, g * c, d)  # G heads share a window
    s = mod.cap_scores((qc @ kw).view(b, hkv, n, g, c, span), softcap)  # 2·D FLOPs per computed pair: C·span
    s.masked_fill_(plan.blocked[:, None], float("-inf"))
    p = torch.softmax(s.float(), dim=-1).to(v.dtype).view(b, hkv, n, g * c, span)
    out = p @ vw.transpose(-2, -1)  # (B, Hkv, n, G·C, D)
    out = out.view(b, hkv, n, g, c, d).transpose(2, 3).reshape(b, hq, n * c, d)
    return out[:, :, :lq]


def _chunked_backend() -> Backend:
    def build(problem: Problem, device: torch.device) -> Fn:
        plan = chunk_plan(problem.seq_q, problem.seq_k, problem.param("window"), problem.causal, device)
        cap = mod.softcap_of(problem)

        def chunked(q, k, v):
            return chunked_sliding_window(q, k, v, plan, cap)

        return chunked

    return mod.refuse(Backend(
        "chunked",
        build,
        "blocked local attention: each chunk of w/2 queries reads its "
        "1.5w (2.5w non-causal) keys through unfold views; O(L·w), no L×L tensor",
        workspace=chunked_workspace,
    ), mod.all_of(mod.no_sinks("chunked (it reads only each chunk's window of keys)", "flex, eager, sdpa or triton"),
              mod.no_sink_logit("chunked")))


def _sw_supports(p: Problem) -> Reason:
    w = p.param("window")
    if not isinstance(w, int) or w < 1:
        return f"window must be a positive integer (got {w!r})"
    if p.seq_q > p.seq_k:
        return f"sliding_window needs seq_q <= seq_k (got {p.seq_q} > {p.seq_k})"
    return mod.check_sinks(p) or mod.check_softcap(p) or check_heads(p)


def _sw_picture(p: Problem) -> torch.Tensor:
    """The window band and the sink columns (the learned sink logit has no column to show)."""
    return pat.sliding_window_mask(p.seq_q, p.seq_k, p.param("window"), p.causal, sinks=p.param("sinks", 0)).float()


def _sw_mod(p: Problem):
    return pat.sliding_window_mod(p.param("window"), p.seq_k - p.seq_q, p.param("sinks", 0))


def _sw_mask(p: Problem, device) -> torch.Tensor:
    return pat.sliding_window_mask(p.seq_q, p.seq_k, p.param("window"), p.causal, device, p.param("sinks", 0))


_CAPPERS = "eager, chunked, flex or triton"
_PEER_REFUSES = mod.all_of(mod.no_sinks("local-attention", "flex, eager, sdpa or triton"),
                           mod.no_sink_logit("local-attention"), mod.no_softcap("local-attention", _CAPPERS))

SLIDING_WINDOW = with_scale(Variant(
    name="sliding_window",
    family="sparse",
    oracle="reference",
    description="local attention: each query sees the keys within `window` positions (default 256), "
    "+ `sinks`, `sink_logit`, `softcap`",
    time="O(L·w)",
    memory="O(L·w)",
    reference=sliding_window_attention,
    flops=lambda p: attention_flops(p, sliding_window_pairs(p)) + mod.softcap_flops(p, sliding_window_pairs(p)),
    bytes=lambda p: io_bytes(p) + mod.sink_logit_bytes(p),
    # flex first: the fastest measured (CPU, L=4k w=256 and L=8k w=128: ~2× chunked), then chunked
    backends=(
        mod.with_flex_sink_logit(flex_backend(mask_mod=_sw_mod, score_mod=mod.softcap_mod), _sw_mod),
        _chunked_backend(),
        eager_backend(sliding_window_attention, "dense masked softmax (the reference)"),
        *(mod.refuse(b, mod.all_of(mod.no_softcap("SDPA", _CAPPERS), mod.no_sink_logit("SDPA")))
          for b in sdpa_backends(_sw_mask, names=("sdpa",))),
        mod.refuse(peers.local_attention_peer(), _PEER_REFUSES),
        triton.window_backend(),
    ),
    resolve=lambda p: fill_defaults(p, window=256),
    why_unsupported=_sw_supports,
    full_attention_error=True,
    defaults={"window": 256},
    options={"sinks": 0, "sink_logit": "off", "softcap": 0.0},
    picture=_sw_picture,
), native=hf_backends())


# ================================================================ block layouts


@dataclass(frozen=True)
class BlockPattern:
    """A block-sparse variant: its layout builder and parameter checks."""

    layout: Callable[[Problem], torch.Tensor]  # -> (nb, nb) bool layout
    check: Callable[[Problem], Reason]

    def mask(self, p: Problem, device=None, causal: bool | None = None) -> torch.Tensor:
        lay = self.layout(p) if device is None else self.layout(p).to(device)
        return pat.pattern_mask(lay, p.param("block"), p.seq_q, p.seq_k, p.causal if causal is None else causal)

    def reference(self, q, k, v, p: Problem) -> torch.Tensor:
        """Dense scores masked to the layout expanded to tokens (and causal): softmax · V."""
        allowed = self.mask(p, q.device, causal=False)  # (Lq, Lk) bool
        return softmax_attention(q, k, v, mask=allowed, causal=p.causal)

    def flops(self, p: Problem) -> float:
        return attention_flops(p, pat.layout_pairs(self.layout(p), p.param("block"), p.seq_q, p.causal))

    def why_unsupported(self, p: Problem) -> Reason:
        if p.seq_q != p.seq_k:
            return (
                f"block-sparse layouts are defined for self-attention (Lq == Lk, got {p.seq_q} and "
                f"{p.seq_k}); cross attention and decode are unsupported"
            )
        block = p.param("block")
        if not isinstance(block, int) or block < 1:
            return f"block must be a positive integer (got {block!r})"
        return self.check(p) or check_heads(p)

    def backends(self) -> tuple[Backend, ...]:
        def mod(p: Problem, device):
            return pat.layout_mask_mod(self.layout(p).to(device), p.param("block"))

        return (
            eager_backend(self.reference, "dense masked softmax over the expanded layout (the reference)"),
            *sdpa_backends(lambda p, dev: self.mask(p, dev), names=("sdpa",)),
            _flex_with_device(mod),
        )

    def picture(self, p: Problem) -> torch.Tensor:
        return self.mask(p).float()


def _block_variant(name: str, description: str, time: str, bp: BlockPattern, defaults: dict, resolve=None) -> Variant:
    return Variant(
        name=name,
        family="sparse",
        oracle="reference",
        description=description,
        time=time,
        memory=time,
        reference=bp.reference,
        flops=bp.flops,
        bytes=io_bytes,
        backends=bp.backends() + (triton.block_sparse_backend(bp.layout),),
        resolve=resolve or (lambda p: fill_defaults(p, **defaults)),
        why_unsupported=bp.why_unsupported,
        full_attention_error=True,
        defaults=dict(defaults),
        picture=bp.picture,
        modes=("fwd", "bwd", "fwd+bwd"),
    )


def _multiple(p: Problem, name: str, of: int, what: str) -> Reason:
    x = p.param(name)
    if not isinstance(x, int) or x < 0 or x % of:
        return f"{name} must be a non-negative multiple of {what}={of} (got {x!r})"
    return None


# ---------------------------------------------------------------- longformer
def _longformer_layout(p: Problem) -> torch.Tensor:
    block = p.param("block")
    return pat.longformer_layout(
        pat.num_blocks(p.seq_q, block),
        half=p.param("window") // (2 * block),
        global_blocks=p.param("global_tokens") // block,
        dilation=p.param("dilation"),
    )


def _longformer_check(p: Problem) -> Reason:
    dil = p.param("dilation")
    if not isinstance(dil, int) or dil < 1:
        return f"dilation must be a positive integer (got {dil!r})"
    return _multiple(p, "window", 2 * p.param("block"), "2·block") or _multiple(
        p, "global_tokens", p.param("block"), "block"
    )


LONGFORMER = _block_variant(
    "longformer",
    "Longformer: (dilated) sliding window of `window` tokens + global tokens, in 64-blocks",
    "O(L·(w+g))",
    BlockPattern(_longformer_layout, _longformer_check),
    {"window": 512, "global_tokens": 64, "dilation": 1, "block": 64},
)


# ---------------------------------------------------------------- bigbird
def _bigbird_layout(p: Problem) -> torch.Tensor:
    return pat.bigbird_layout(
        pat.num_blocks(p.seq_q, p.param("block")),
        p.param("window_blocks"),
        p.param("global_blocks"),
        p.param("random_blocks"),
        p.param("seed"),
        p.causal,
    )


def _bigbird_check(p: Problem) -> Reason:
    w = p.param("window_blocks")
    if not isinstance(w, int) or w < 1 or w % 2 == 0:
        return f"window_blocks must be odd (the query block and as many on each side; got {w!r})"
    for name in ("global_blocks", "random_blocks", "seed"):
        if not isinstance(p.param(name), int) or p.param(name) < 0:
            return f"{name} must be a non-negative integer (got {p.param(name)!r})"
    return None


BIGBIRD = _block_variant(
    "bigbird",
    "BigBird: window + global + seeded random blocks (ITC, block 64)",
    "O(L·b·(w+g+r))",
    BlockPattern(_bigbird_layout, _bigbird_check),
    {"block": 64, "window_blocks": 3, "global_blocks": 2, "random_blocks": 3, "seed": 0},
)


# ---------------------------------------------------------------- strided (Sparse Transformer)
def _strided_layout(p: Problem) -> torch.Tensor:
    block = p.param("block")
    nb, s = pat.num_blocks(p.seq_q, block), p.param("stride") // block
    if p.param("pattern") == "fixed":
        return pat.fixed_layout(nb, s, p.param("summary"))
    return pat.strided_layout(nb, s)


def _strided_check(p: Problem) -> Reason:
    if p.param("pattern") not in ("strided", "fixed"):
        return f"pattern must be 'strided' or 'fixed' (got {p.param('pattern')!r})"
    block = p.param("block")
    reason = _multiple(p, "stride", block, "block")
    if reason or p.param("stride") < block:
        return reason or f"stride must be at least block={block}"
    c = p.param("summary")
    if not isinstance(c, int) or not 1 <= c <= p.param("stride") // block:
        return f"summary must be 1..stride/block blocks (got {c!r})"
    return None


def _strided_resolve(p: Problem) -> Problem:
    p = fill_defaults(p, pattern="strided", stride=0, summary=1, block=64)
    if p.param("stride") == 0 and isinstance(p.param("block"), int) and p.param("block") > 0:
        p = p.with_params(stride=p.param("block") * pat.auto_stride_blocks(p.seq_q, p.param("block")))
    return p


STRIDED = _block_variant(
    "strided",
    "Sparse Transformer strided/fixed patterns in 64-blocks, stride ≈ √L (0 = auto)",
    "O(L·√L)",
    BlockPattern(_strided_layout, _strided_check),
    {"pattern": "strided", "stride": 0, "summary": 1, "block": 64},
    resolve=_strided_resolve,
)

VARIANTS = (SLIDING_WINDOW, LONGFORMER, BIGBIRD, STRIDED)
