"""Paged split-KV decoding attention in Triton (PagedAttention's decode step), forward only.

One query per sequence attends its own KV cache, which lives in fixed-size pages of a shared
pool addressed by a block table (Kwon et al., "Efficient Memory Management for Large Language
Model Serving with PagedAttention", 2023), with the key axis cut into `num_splits` chunks
computed in parallel and merged by their log-sum-exp (Flash-Decoding, as in decode.py):

    k_pool, v_pool  (P, page_size, Hkv, D)   P pages of page_size token slots ("NHD", vLLM's and
                                             FlashInfer's default layout)
    block_table     (B, max_pages) int32     page j of sequence b is k_pool[block_table[b, j]]
    lengths         (B,) int32               token t < lengths[b] of sequence b sits at slot
                                             t % page_size of page block_table[b, t // page_size]
    q               (B, Hq, 1, D)            the query at position lengths[b] - 1: it sees all
                                             lengths[b] keys of its sequence
    out             (B, Hq, 1, D)

Each program gathers BLOCK_N keys through the block table (any page size: a tile may span
pages), so only the lengths[b] real tokens of each sequence are read: time and bytes
O(Σ_b lengths[b]·Hkv·D), nothing for padding. GQA is native: the G = Hq/Hkv query heads of a KV
head are the rows of one tile, so each K/V tile is read once per KV head. A dense padded cache
(B, Hkv, L, D) is the special case of B pages of L slots (see `dense_as_pages`).

Does not support: backward, more than one query per sequence (prefill: use flash_attention on
each sequence), windows, ALiBi, soft-capping, quantised caches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    AotKernel,
    _online_softmax_step,
    autotune_by_arch,
    block_d,
    check_device,
    default_scale,
    interpreting,
    pick_tuner,
)

MAX_SPLITS = 64
MAX_HEAD_DIM = 256
TUNE_KEY = ["max_len", "num_splits", "HEAD_DIM", "BLOCK_M"]
C = triton.Config
# BLOCK_N keys per step; BLOCK_M = G padded to 16..64 is set by the launcher (compiled at 64, the
# worst case). Each config compiles for sm_80/sm_90 with 0 spills (tests/kernels/test_paged_decode.py).
PAGED_CONFIGS = {
    # dropped BLOCK_N=64 w4 s2: 255 registers, spills 48 B at D=128 (the gathered page indices)
    "sm_80": [C({"BLOCK_N": 64}, num_warps=8, num_stages=2), C({"BLOCK_N": 32}, num_warps=4, num_stages=3)],
    "sm_90": [C({"BLOCK_N": 64}, num_warps=4, num_stages=3), C({"BLOCK_N": 32}, num_warps=4, num_stages=2)],
}
PAGED_CONFIGS_WIDE = {  # head dims 129..256
    "sm_80": [C({"BLOCK_N": 32}, num_warps=8, num_stages=3)],
    "sm_90": [C({"BLOCK_N": 32}, num_warps=8, num_stages=3)],
}
INTERPRET_PAGED = C({"BLOCK_N": 32}, num_warps=4, num_stages=1)


@triton.jit
def _paged_split_kernel(Q, K, V, BlockTable, Lengths, OPart, LsePart, sm_scale,
                        stride_qb, stride_qh, stride_kp, stride_kn, stride_kh,
                        stride_vp, stride_vn, stride_vh, stride_bt,
                        Hq, group, page_size, max_len, num_splits,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, UPCAST: tl.constexpr):
    """One program: one key chunk of sequence b × BLOCK_M query heads of one KV head.

    Grid (num_splits, B*Hkv, cdiv(group, BLOCK_M)). OPart (B, Hq, S, D) and LsePart (B, Hq, S)
    are fp32; a chunk past the sequence's end gets lse -inf and output 0."""
    pid_s = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    Hkv = Hq // group
    b = (pid_bhk // Hkv).to(tl.int64)
    hk = (pid_bhk % Hkv).to(tl.int64)
    r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # row = query head within the group
    row_ok = r < group
    h = hk * group + r
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    length = tl.load(Lengths + b)
    chunk = tl.cdiv(tl.cdiv(length, num_splits), BLOCK_N) * BLOCK_N
    lo = pid_s * chunk
    hi = tl.minimum(lo + chunk, length)
    qk_scale = sm_scale * 1.4426950408889634  # log2 units
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n  # logical token positions of this tile
        ok = cols < hi
        page = tl.load(BlockTable + b * stride_bt + cols // page_size, mask=ok, other=0).to(tl.int64)
        slot = (cols % page_size).to(tl.int64)
        kv_mask = ok[:, None] & d_ok[None, :]
        k = tl.load(K + page[:, None] * stride_kp + slot[:, None] * stride_kn + hk * stride_kh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(V + page[:, None] * stride_vp + slot[:, None] * stride_vn + hk * stride_vh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc, v)
    empty = l_i == 0.0
    part = (b * Hq + h) * num_splits + pid_s  # (B, Hq, S) flat index per row
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(OPart + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LsePart + part, lse, mask=row_ok)


@triton.jit
def _paged_merge_kernel(OPart, LsePart, O, num_splits, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_S: tl.constexpr):
    """One program per (b, h): out = Σ_s 2^(lse_s - M)·o_s / Σ_s 2^(lse_s - M), M = max_s lse_s.
    A sequence of length 0 (no chunk saw a key) gets 0."""
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    lse = tl.load(LsePart + row * num_splits + offs_s, mask=offs_s < num_splits, other=float("-inf"))
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse - m)
    parts = tl.load(OPart + (row * num_splits + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                    mask=(offs_s[:, None] < num_splits) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    total = tl.sum(w, axis=0)
    out = tl.sum(parts * w[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(O + row * HEAD_DIM + offs_d, out.to(O.dtype.element_ty), mask=offs_d < HEAD_DIM)


_SPLIT = autotune_by_arch(_paged_split_kernel, PAGED_CONFIGS, PAGED_CONFIGS_WIDE, TUNE_KEY, INTERPRET_PAGED)


def default_num_splits(batch_kv_heads: int, row_blocks: int, max_len: int, device: torch.device) -> int:
    """Enough programs to fill the GPU about twice, each chunk of the longest sequence at least
    256 keys, at most 64 (short sequences leave their later chunks empty)."""
    sms = 16 if interpreting() else torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(2 * sms, batch_kv_heads * row_blocks)
    return max(1, min(want, triton.cdiv(max_len, 256), MAX_SPLITS))


def dense_as_pages(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense cache (B, Hkv, L, D) as a pool of B pages of L slots, (B, L, Hkv, D) (a view, no
    copy), and its block table (B, 1) = [[0], [1], ...]: paged_decode then reads it in place."""
    table = torch.arange(k.shape[0], device=k.device, dtype=torch.int32)[:, None]
    return k.transpose(1, 2), table


def _check(q, k_pool, v_pool, block_table, lengths, num_splits) -> None:
    name = "paged_decode"
    if q.dim() != 4 or q.shape[2] != 1:
        raise ValueError(f"{name}: q must be (B, Hq, 1, D), got shape {tuple(q.shape)}")
    if k_pool.dim() != 4 or k_pool.shape != v_pool.shape:
        raise ValueError(f"{name}: k_pool and v_pool must both be (pages, page_size, Hkv, D), got "
                         f"{tuple(k_pool.shape)} and {tuple(v_pool.shape)}")
    b, hq, _, d = q.shape
    hkv = k_pool.shape[2]
    if k_pool.shape[3] != d or hkv == 0 or hq % hkv:
        raise ValueError(f"{name}: pool {tuple(k_pool.shape)} must have D={d} and kv heads dividing {hq}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"{name}: head dim {d} > {MAX_HEAD_DIM} is not supported")
    if any(t.stride(-1) != 1 for t in (q, k_pool, v_pool)):
        raise ValueError(f"{name}: q and the pools need a contiguous last dimension")
    if block_table.dim() != 2 or block_table.shape[0] != b or block_table.dtype != torch.int32:
        raise ValueError(f"{name}: block_table must be int32 (B={b}, max_pages), got "
                         f"{block_table.dtype} {tuple(block_table.shape)}")
    if lengths.shape != (b,) or lengths.dtype != torch.int32:
        raise ValueError(f"{name}: lengths must be int32 (B={b},), got {lengths.dtype} {tuple(lengths.shape)}")
    if not q.dtype == k_pool.dtype == v_pool.dtype:
        raise ValueError(f"{name}: q, k_pool, v_pool dtypes differ: {q.dtype}, {k_pool.dtype}, {v_pool.dtype}")
    if num_splits is not None and not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"{name}: num_splits must be in 1..{MAX_SPLITS}, got {num_splits}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_pool, v_pool)):
        raise ValueError(f"{name} is forward-only: call it under torch.no_grad()")
    check_device(name, q, k_pool, v_pool, block_table, lengths)


def paged_decode(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_table: torch.Tensor,
                 lengths: torch.Tensor, *, max_len: int | None = None, softmax_scale: float | None = None,
                 num_splits: int | None = None) -> torch.Tensor:
    """Decode attention of q (B, Hq, 1, D) over paged caches (see the module docstring).

    max_len: the longest length (default: lengths.max(), a device sync; pass it from setup).
    The caller guarantees block_table[b, :cdiv(lengths[b], page_size)] are valid page indices."""
    _check(q, k_pool, v_pool, block_table, lengths, num_splits)
    b, hq, _, d = q.shape
    page_size, hkv = k_pool.shape[1], k_pool.shape[2]
    group = hq // hkv
    max_len = int(lengths.max()) if max_len is None else max_len
    block_m = min(64, max(16, triton.next_power_of_2(group)))
    row_blocks = triton.cdiv(group, block_m)
    splits = num_splits or default_num_splits(b * hkv, row_blocks, max(max_len, 1), q.device)
    o_part = torch.empty((b, hq, splits, d), device=q.device, dtype=torch.float32)
    lse_part = torch.empty((b, hq, splits), device=q.device, dtype=torch.float32)
    pick_tuner(_SPLIT, q)[(splits, b * hkv, row_blocks)](
        q, k_pool, v_pool, block_table, lengths, o_part, lse_part, default_scale(d, softmax_scale),
        q.stride(0), q.stride(1), *k_pool.stride()[:3], *v_pool.stride()[:3], block_table.stride(0),
        hq, group, page_size, max_len, splits,
        HEAD_DIM=d, BLOCK_D=block_d(d), BLOCK_M=block_m, UPCAST=interpreting() and q.dtype == torch.bfloat16)
    o = torch.empty((b, hq, 1, d), device=q.device, dtype=q.dtype)
    _paged_merge_kernel[(b * hq,)](o_part, lse_part, o, splits, HEAD_DIM=d, BLOCK_D=block_d(d),
                                   BLOCK_S=max(2, triton.next_power_of_2(splits)))
    return o


# ---------------------------------------------------------------- ahead-of-time compile specs
_TYPES = {"Q": "*T", "K": "*T", "V": "*T", "O": "*T", "OPart": "*fp32", "LsePart": "*fp32",
          "BlockTable": "*i32", "Lengths": "*i32", "sm_scale": "fp32"}
_MERGE_CONFIGS = {arch: [C({}, num_warps=4, num_stages=1)] for arch in ("sm_80", "sm_90")}
_SPLIT_FLAGS = dict(BLOCK_M=64, UPCAST=False)  # BLOCK_M 64: G >= 33, the worst case
AOT_KERNELS = (
    AotKernel("paged.split", _paged_split_kernel, PAGED_CONFIGS, _TYPES, _SPLIT_FLAGS, head_dims=(64, 128)),
    AotKernel("paged.split", _paged_split_kernel, PAGED_CONFIGS_WIDE, _TYPES, _SPLIT_FLAGS, head_dims=(256,)),
    AotKernel("paged.merge", _paged_merge_kernel, _MERGE_CONFIGS, _TYPES, dict(BLOCK_S=MAX_SPLITS),
              head_dims=(128, 256)),
)
