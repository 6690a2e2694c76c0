"""Sparse attention patterns, defined once for every backend (eager, SDPA with a mask, FlexAttention
and block-sparse kernels), so that all of them compute the same thing.

A pattern says which (query, key) pairs are attended. Two granularities:

* **token level** — sliding window. ``sliding_window_mask`` returns an (Lq, Lk) bool tensor
  (True = attend) and ``sliding_window_mod`` the FlexAttention ``mask_mod`` giving the same mask.
* **block level** — Longformer, BigBird, Sparse Transformer (strided / fixed). A *layout* is an
  (n_q_blocks, n_k_blocks) bool tensor; block (r, c) True means every query of block r attends
  every key of block c. ``layout_to_mask`` expands it to tokens, ``layout_mask_mod`` indexes it
  from FlexAttention. The granularity ``block`` (default 64) follows DeepSpeed's sparse-attention
  configs (``BSLongformerSparsityConfig``, ``BigBirdSparsityConfig``, ``FixedSparsityConfig``)
  and BigBird's ``block_size=64``: a block-sparse kernel then skips whole tiles. The last block
  may be ragged (L not a multiple of ``block``); it is simply shorter.

Positions. Query i has the absolute position i' = i + (Lk - Lq) (bottom-right alignment, as for
causal masks: the last query is at the last key). Every pattern below is defined *without*
causality; a causal problem ands the pattern with the bottom-right causal mask j <= i' (token
level, also inside diagonal blocks). So, precisely:

    sliding window w:  non-causal  i' - w < j < i' + w     (2w - 1 keys away from the edges)
                       causal      i' - w < j <= i'        (w keys: the query and w - 1 before)
    + N sinks:         or j < N (the first N keys, StreamingLLM; still j <= i' when causal)

Block layouts are defined for self-attention (Lq == Lk, rows and columns use the same blocks);
the variants declare Lq != Lk (cross attention, decode) unsupported.

Honest limits: Longformer's per-head dilation and task-chosen global tokens (e.g. [CLS]) become
whole blocks here; BigBird's random blocks are drawn once per layout (shared by batch and heads),
as DeepSpeed does, not per head.
"""

from __future__ import annotations

import math

import torch

# ---------------------------------------------------------------- token level


def positions(lq: int, lk: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Lq, 1) absolute query positions i' = i + Lk - Lq and (1, Lk) key positions j."""
    qpos = torch.arange(lq, device=device)[:, None] + (lk - lq)
    kpos = torch.arange(lk, device=device)[None, :]
    return qpos, kpos


def causal_mask(lq: int, lk: int, device=None) -> torch.Tensor:
    """(Lq, Lk) bool: j <= i' (bottom-right aligned)."""
    qpos, kpos = positions(lq, lk, device)
    return kpos <= qpos


def sliding_window_mask(lq: int, lk: int, window: int, causal: bool, device=None, sinks: int = 0) -> torch.Tensor:
    """(Lq, Lk) bool: |i' - j| < window or j < sinks, and j <= i' when causal."""
    qpos, kpos = positions(lq, lk, device)
    band = ((qpos - kpos).abs() < window) | (kpos < sinks)
    return band & (kpos <= qpos) if causal else band


def sliding_window_mod(window: int, offset: int, sinks: int = 0):
    """FlexAttention mask_mod of the (non-causal) window |i' - j| < window, i' = q_idx + offset,
    or j < sinks. Causality is and-ed by the flex backend, exactly as for the token mask."""

    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx + offset - kv_idx).abs() < window

    def sink_window(b, h, q_idx, kv_idx):
        return ((q_idx + offset - kv_idx).abs() < window) | (kv_idx < sinks)

    return sink_window if sinks else sliding_window


# ---------------------------------------------------------------- block layouts -> tokens


def num_blocks(length: int, block: int) -> int:
    return -(-length // block)


def layout_to_mask(layout: torch.Tensor, block: int, lq: int, lk: int) -> torch.Tensor:
    """Expand an (n_q_blocks, n_k_blocks) layout to the (Lq, Lk) token mask (no causality)."""
    rows = torch.arange(lq, device=layout.device) // block
    cols = torch.arange(lk, device=layout.device) // block
    return layout[rows[:, None], cols[None, :]]


def layout_mask_mod(layout: torch.Tensor, block: int):
    """FlexAttention mask_mod reading the layout at (q_idx // block, kv_idx // block).

    Indices are clamped to the layout: FlexAttention may evaluate a mask_mod on the padding of a
    ragged last tile, whose result it discards."""
    last_r, last_c = layout.shape[0] - 1, layout.shape[1] - 1

    def block_layout(b, h, q_idx, kv_idx):
        r = torch.clamp(q_idx // block, max=last_r)
        c = torch.clamp(kv_idx // block, max=last_c)
        return layout[r, c]

    return block_layout


def pattern_mask(layout: torch.Tensor, block: int, lq: int, lk: int, causal: bool) -> torch.Tensor:
    """The token mask of a layout, and-ed with the bottom-right causal mask when causal."""
    mask = layout_to_mask(layout, block, lq, lk)
    return mask & causal_mask(lq, lk, layout.device) if causal else mask


def layout_pairs(layout: torch.Tensor, block: int, length: int, causal: bool) -> int:
    """Attended (query, key) pairs of a self-attention layout (Lq == Lk == length), analytically.

    Block r holds n_r = min(block, length - r·block) positions. A True block (r, c) gives
    n_r·n_c pairs; under causality only blocks with c < r are full, a diagonal block (r, r)
    gives the triangle n_r(n_r + 1)/2 and blocks above the diagonal give none."""
    nb = layout.shape[0]
    sizes = torch.full((nb,), block, dtype=torch.int64)
    sizes[-1] = length - (nb - 1) * block
    full = sizes[:, None] * sizes[None, :]  # (nb, nb) pairs of a full block
    lay = layout.cpu().to(torch.int64)
    if not causal:
        return int((lay * full).sum())
    below = torch.tril(lay, diagonal=-1)
    diag = torch.diagonal(lay)
    return int((below * full).sum() + (diag * sizes * (sizes + 1) // 2).sum())


# ---------------------------------------------------------------- block layouts


def _offsets(nb: int) -> torch.Tensor:
    """(nb, nb) r - c, the block distance from query block r to key block c."""
    r = torch.arange(nb)
    return r[:, None] - r[None, :]


def band_layout(nb: int, half: int, dilation: int = 1) -> torch.Tensor:
    """Blocks c = r + k·dilation for |k| <= half: the query block and `half` blocks each side,
    `dilation` blocks apart (dilation 1: a contiguous band of 2·half + 1 blocks)."""
    d = _offsets(nb)
    return (d.abs() <= half * dilation) & (d % dilation == 0)


def global_layout(nb: int, global_ids: torch.Tensor) -> torch.Tensor:
    """Global blocks attend to every block and every block attends to them (symmetric)."""
    is_global = torch.zeros(nb, dtype=torch.bool)
    is_global[global_ids] = True
    return is_global[:, None] | is_global[None, :]


def longformer_layout(nb: int, half: int, global_blocks: int, dilation: int = 1) -> torch.Tensor:
    """Longformer (Beltagy et al. 2020) at block granularity, as DeepSpeed's BSLongformer:
    a (dilated) band of `half` blocks each side plus the first `global_blocks` blocks global."""
    return band_layout(nb, half, dilation) | global_layout(nb, torch.arange(min(global_blocks, nb)))


def bigbird_global_ids(nb: int, global_blocks: int) -> torch.Tensor:
    """BigBird-ITC places global blocks at both ends: the first ceil(g/2) and the last floor(g/2)."""
    first = torch.arange(min(nb, (global_blocks + 1) // 2))
    last = torch.arange(max(0, nb - global_blocks // 2), nb)
    return torch.cat([first, last]).unique()


def bigbird_layout(nb: int, window_blocks: int, global_blocks: int, random_blocks: int,
                   seed: int, causal: bool = False) -> torch.Tensor:
    """BigBird (Zaheer et al. 2020): window + global + random blocks.

    Window: window_blocks // 2 blocks on each side of the query block. Global: see
    bigbird_global_ids. Random: each non-global query block draws `random_blocks` more key blocks
    uniformly among those it does not attend yet (when causal, among earlier blocks only, so none
    is masked away), from torch.Generator().manual_seed(seed): deterministic given the seed."""
    ids = bigbird_global_ids(nb, global_blocks)
    layout = band_layout(nb, window_blocks // 2) | global_layout(nb, ids)
    gen = torch.Generator().manual_seed(seed)
    for r in range(nb):
        if r in ids:
            continue
        allowed = ~layout[r]
        if causal:
            allowed[r + 1:] = False
        candidates = allowed.nonzero().flatten()
        pick = torch.randperm(len(candidates), generator=gen)[:random_blocks]
        layout[r, candidates[pick]] = True
    return layout


def strided_layout(nb: int, stride_blocks: int) -> torch.Tensor:
    """Sparse Transformer "strided" (Child et al. 2019) at block granularity, s = stride_blocks:
    local band |r - c| < s (causal: the s blocks up to the query block) and every s-th block,
    (r - c) mod s == 0 (the strided "column" head)."""
    d = _offsets(nb)
    return (d.abs() < stride_blocks) | (d % stride_blocks == 0)


def fixed_layout(nb: int, stride_blocks: int, summary: int) -> torch.Tensor:
    """Sparse Transformer "fixed" (Child et al. 2019) at block granularity: blocks of the same
    chunk of s = stride_blocks blocks (floor(c/s) == floor(r/s)), plus the last `summary` blocks
    of every chunk as summary columns (c mod s >= s - summary) that all queries read."""
    r = torch.arange(nb)
    same_chunk = (r[:, None] // stride_blocks) == (r[None, :] // stride_blocks)
    summary_col = (r % stride_blocks) >= stride_blocks - summary
    return same_chunk | summary_col[None, :]


def auto_stride_blocks(length: int, block: int) -> int:
    """Stride ≈ √(number of blocks), so a row reads ≈ 2√(L/block) blocks: O(L·√L) overall."""
    return max(1, round(math.sqrt(num_blocks(length, block))))
