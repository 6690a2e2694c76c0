"""Attention over an input-dependent block selection (MoBA, NSA's selected branch): the pieces the
flex and Triton backends of those families share.

A selection is `chosen` (B, Hq, Lq, nkb) bool: query i of head h attends the tokens of key block j
(of `block` tokens) where chosen[..., i, j], and only keys at or before its key-axis position
i' = i + Lk − Lq (bottom-right causal).

  flex    `flex_selected`: a BlockMask built from the selection (tiles of max(block, 128) queries
          × keys; a tile is listed where any of its rows chose any of its key blocks, "full" where all
          of them chose all of it and see all of it), and a mask_mod that looks each (query, key block) up in
          `chosen`, so per-token selections stay exact. The mask is built INSIDE the timed call: the
          selection depends on that call's q and k.
  triton  `block_layout`: the (B·Hq, nqb, nkb) layout of attnbench.kernels.block_sparse, one row
          per query block. The kernel gives every row of a query block the same key blocks, so
          it computes a selection only when the selection is made per query block
          (`select_by=query_block`) or there is a single query (decode); `triton_reason` says so.

`select_by` (a parameter of both families): "token", each query selects its own blocks (the
papers' definition); "query_block", the queries whose key-axis positions fall in one key block
select together, by their per-token selection scores averaged (MoBA: the mean query's gate; NSA:
the block importances summed over those queries) — what a query-tiled kernel can run.
"""

from __future__ import annotations

import torch

from attnbench.core.problem import Problem
from attnbench.variants.backends import triton
from attnbench.variants.base import Reason

SELECT_BY = ("token", "query_block")


def check_select_by(p: Problem) -> Reason:
    if p.param("select_by") not in SELECT_BY:
        return f"bad select_by {p.param('select_by')!r}; accepted: {', '.join(SELECT_BY)}"
    return None


def query_blocks(p: Problem, device) -> torch.Tensor:
    """(Lq,) int64: each query's key-axis block i' // block (its selection group under query_block)."""
    ip = torch.arange(p.seq_q, device=device) + (p.seq_k - p.seq_q)
    return ip // p.param("block")


def pool_by_query_block(x: torch.Tensor, p: Problem, reduce: str) -> torch.Tensor:
    """x (..., Lq, n) -> the same shape, each query's row replaced by the sum or mean of the rows of
    the queries in its key-axis block (the identity under select_by=token)."""
    if p.param("select_by") == "token":
        return x
    grp = query_blocks(p, x.device)
    n_grp = int(grp.max()) + 1
    total = x.new_zeros(*x.shape[:-2], n_grp, x.shape[-1]).index_add_(-2, grp, x)
    if reduce == "mean":
        total = total / torch.bincount(grp, minlength=n_grp).clamp(min=1).to(x.dtype)[:, None]
    return total[..., grp, :]


FLEX_TILE = 128  # the BlockMask's tile: FlexAttention's GPU kernels need tiles their BLOCK_M/BLOCK_N
# (64 or 128 in torch's default configs) divide; a selection block smaller than it is grouped into tiles


def flex_selected(q, k, v, chosen: torch.Tensor, block: int) -> torch.Tensor:
    """softmax(q kᵀ/√D) v over the chosen blocks (bottom-right causal), with compiled FlexAttention.
    q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D), chosen (B, Hq, Lq, ceil(Lk/block)) bool; block a power
    of two >= 16. Tiles of max(block, FLEX_TILE): a tile is listed when any of its rows chose any of
    its blocks, "full" when every row chose every block in it and sees all of it."""
    from torch.nn.attention.flex_attention import BlockMask

    from attnbench.variants.backends.flex import compiled_flex

    b, hq, lq, _ = q.shape
    lk, off = k.shape[2], k.shape[2] - q.shape[2]
    tile = max(block, FLEX_TILE)
    r, nqt, nkt = tile // block, -(-lq // tile), -(-lk // tile)
    # padded to whole tiles, so the mask_mod never indexes past the table
    table = torch.nn.functional.pad(chosen, (0, nkt * r - chosen.shape[-1], 0, nqt * tile - lq))
    rows = table.view(b, hq, nqt, tile, nkt, r)
    valid = (torch.arange(nqt * tile, device=q.device) < lq).view(1, 1, nqt, tile, 1, 1)
    first = torch.arange(nqt, device=q.device) * tile + off  # each tile's first key-axis position
    ends = torch.arange(1, nkt + 1, device=q.device) * tile - 1  # each key tile's last key
    seen = (ends[None, :] <= first[:, None]) & (ends[None, :] < lk)  # the whole key tile visible
    anyq = rows.any(3).any(-1)  # (B, Hq, nqt, nkt)
    full = (rows | ~valid).all(3).all(-1) & seen & anyq
    partial = anyq & ~full

    def listed(layout):  # (B, Hq, nqt, nkt) bool -> counts, indices (True first, in order)
        order = torch.argsort((~layout).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return layout.sum(-1, dtype=torch.int32), order

    def selected(bi, hi, q_idx, kv_idx):
        return table[bi, hi, q_idx, kv_idx // block] & (kv_idx <= q_idx + off)

    mask = BlockMask.from_kv_blocks(*listed(partial), *listed(full), BLOCK_SIZE=tile, mask_mod=selected,
                                    seq_lengths=(lq, lk))
    return compiled_flex()(q, k, v, block_mask=mask, enable_gqa=hq != k.shape[1])


def block_layout(chosen: torch.Tensor, block: int) -> torch.Tensor:
    """chosen (B, Hq, Lq, nkb) -> (B·Hq, ceil(Lq/block), nkb) bool: each query block's first row
    (the block-sparse kernel's layout; exact when every row of a query block chose alike)."""
    b, hq, _, nkb = chosen.shape
    return chosen[:, :, ::block].reshape(b * hq, -1, nkb)


def triton_reason(p: Problem) -> Reason:
    """Why the block-sparse kernel cannot compute this selection, or None."""
    from attnbench.kernels.block_sparse import BLOCKS

    if p.param("block") not in BLOCKS:
        return f"the Triton block-sparse kernel takes block in {BLOCKS} (got {p.param('block')})"
    if p.param("select_by") == "token" and p.seq_q > 1:
        return ("the Triton block-sparse kernel gives every row of a query block the same key blocks, and "
                "select_by=token selects per query; use --param select_by=query_block (or flex, gather, eager)")
    if p.seq_q not in (1, p.seq_k):
        return "the query blocks must align with the key blocks (Lq = Lk, or one query)"
    return None


def flex_supports(p: Problem, device: torch.device) -> Reason:
    """The flex backends of moba and nsa: the block is the BlockMask's tile."""
    bs = p.param("block")
    if bs < 16 or bs & (bs - 1):
        return f"flex takes a power-of-two block >= 16 (its BlockMask tile; got {bs})"
    if p.head_dim < 16 or p.head_dim & (p.head_dim - 1):
        return f"FlexAttention needs a power-of-two head_dim >= 16 (got {p.head_dim})"
    return None


def triton_supports(p: Problem, device: torch.device) -> Reason:
    """The Triton backends of moba and nsa: the selection's granularity, then the flash kernel's own limits."""
    return triton_reason(p) or triton.flash_backend().why_unsupported(p, device)
