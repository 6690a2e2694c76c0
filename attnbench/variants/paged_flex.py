"""The BlockMask of a ragged batch over a paged (or padded) KV cache, for the `flex` backend of
variants/paged.py.

FlexAttention visits, for each (sequence b, query block), only the KV blocks its BlockMask lists.
With the paged layout the KV tensor is the whole pool seen as one flat sequence (1, Hkv, P·page,
D), the KV block is one page, and sequence b's list is its own pages, read through the block
table: other sequences' pages are never visited (the indirection lives in the BlockMask's
kv_indices, as in torch's experimental PagedAttention). Pages wholly inside the sequence (and,
in prefill, wholly below the query block) are "full" blocks computed without the mask_mod; the
rest (a sequence's last page, the causal diagonal) apply it:

    paged   page = kv // page_size, position = logical[page]·page_size + kv % page_size,
            visible iff owner[page] == b and position < L_b (prefill: and position <= q < L_b)
    dense   position = kv, the same rule over the padded (B, Hkv, Lmax, D) cache

Query rows past L_b (prefill's padding) see no key: FlexAttention returns 0 for them.
"""

from __future__ import annotations

import torch

Q_BLOCK = 128  # FlexAttention's default query block


def block_states(lengths: torch.Tensor, blocks: int, block: int, q_len: int, causal: bool):
    """(visible, full): bool (B, query blocks, blocks) for the logical KV blocks of each
    sequence: visible = some (query, key) pair of the block is attended; full = every pair is."""
    start = (torch.arange(blocks, device=lengths.device) * block)[None, None, :]
    n = lengths[:, None, None]
    if not causal:  # decode: the query (at position L_b - 1) sees all L_b keys
        return (start < n).expand(-1, 1, -1), (start + block <= n).expand(-1, 1, -1)
    q0 = (torch.arange(-(-q_len // Q_BLOCK), device=lengths.device) * Q_BLOCK)[None, :, None]
    q1 = torch.clamp(q0 + Q_BLOCK, max=q_len) - 1  # the block's last query row
    visible = (start < n) & (q0 < n) & (start <= torch.minimum(q1, n - 1))
    full = (start + block <= n) & (start + block - 1 <= q0) & (q1 < n)
    return visible, full


def _pack(select: torch.Tensor, physical: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(num (B, 1, Qb) int32, indices (B, 1, Qb, width) int32): the selected blocks first."""
    order = torch.argsort((~select).to(torch.int8), dim=-1, stable=True)
    idx = torch.gather(physical, -1, order).to(torch.int32)
    out = torch.zeros(*idx.shape[:-1], width, dtype=torch.int32, device=idx.device)
    out[..., : idx.shape[-1]] = idx
    return select.sum(-1).to(torch.int32)[:, None].contiguous(), out[:, None].contiguous()


def _mask_mod(lengths: torch.Tensor, causal: bool, owner=None, logical=None, page_size: int = 0):
    def ragged(b, h, q_idx, kv_idx):
        if owner is None:
            pos = kv_idx
            ok = pos < lengths[b]
        else:
            page = kv_idx // page_size
            pos = logical[page] * page_size + kv_idx % page_size
            ok = (owner[page] == b) & (pos < lengths[b])
        if causal:
            ok = ok & (pos <= q_idx) & (q_idx < lengths[b])
        return ok

    return ragged


def ragged_block_mask(lengths: torch.Tensor, table: torch.Tensor, block: int, q_len: int, kv_len: int,
                      causal: bool, paged: bool):
    """The BlockMask for q (B, Hq, q_len, D) over a KV of kv_len slots in blocks of `block`.

    table (B, logical blocks) long: the physical block of each logical block of each sequence
    (the page table; arange for the padded cache); lengths (B,) long."""
    from torch.nn.attention.flex_attention import BlockMask

    width = -(-kv_len // block)
    physical = table[:, None, :].expand(-1, -(-q_len // Q_BLOCK), -1)
    visible, full = block_states(lengths, table.shape[1], block, q_len, causal)
    visible, full = visible.expand_as(physical), full.expand_as(physical)
    kv_num, kv_idx = _pack(visible & ~full, physical, width)
    full_num, full_idx = _pack(full, physical, width)
    owner = logical = None
    if paged:
        owner = torch.full((width,), -1, dtype=torch.long, device=table.device)
        logical = torch.zeros(width, dtype=torch.long, device=table.device)
        for b, n in enumerate(lengths.tolist()):
            pages = table[b, : -(-n // block)]
            owner[pages] = b
            logical[pages] = torch.arange(len(pages), device=table.device)
    mod = _mask_mod(lengths, causal, owner, logical, block)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=(Q_BLOCK, block),
                                    mask_mod=mod, seq_lengths=(q_len, kv_len))
