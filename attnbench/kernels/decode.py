"""Split-KV decoding attention (Flash-Decoding) in Triton, forward only.

Follows Dao, Haziza, Massa, Sizov, "Flash-Decoding for long-context inference" (2023): with
few queries a FlashAttention grid over query blocks has too few programs to fill the GPU, so
the key/value length is cut into `num_splits` chunks processed in parallel. Each chunk yields
a partial output (normalised) and its log-sum-exp; a second kernel merges the chunks:
out = Σ_s 2^(lse_s - M)·o_s / Σ_s 2^(lse_s - M), with M = max_s lse_s.

Supports
  * q (B, Hq, Lq, D) with 1 <= Lq <= 16 (decoding, speculative decoding), k and v
    (B, Hkv, Lk, D) with Hkv | Hq; head dims up to 256; float16, bfloat16, float32.
  * GQA/MQA natively: one program holds all G = Hq/Hkv query heads × Lq queries of a KV head
    as the rows of one tile (row r -> head r // Lq, query r % Lq), so each K/V tile is read
    once per KV head, not once per query head.
  * causal=True (bottom-right aligned: query i sees key j iff j <= i + Lk - Lq), for
    multi-token decoding; the default is False (every query sees the whole cache).

Does not support
  * backward (there is no autograd: inputs that require grad raise a ValueError),
    windows, ALiBi, paged or ragged KV caches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    AotKernel,
    _load_rows,
    _online_softmax_step,
    autotune_by_arch,
    block_d,
    check_qkv,
    default_scale,
    interpreting,
    pick_tuner,
    upcast_for,
)
from .configs import DECODE_CONFIGS, DECODE_CONFIGS_WIDE, INTERPRET_DECODE

MAX_QUERIES = 16
MAX_SPLITS = 64
TUNE_KEY = ["Lk", "num_splits", "HEAD_DIM", "BLOCK_M"]


@triton.jit
def _split_kernel(Q, K, V, OPart, LsePart, sm_scale,
                  stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn,
                  Hq, group, Lq, Lk, num_splits,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, UPCAST: tl.constexpr):
    """One program: one key chunk × BLOCK_M (query head, query) rows of one (batch, KV head).

    Grid (num_splits, B*Hkv, cdiv(group*Lq, BLOCK_M)). OPart (B, Hq, Lq, S, D) and
    LsePart (B, Hq, Lq, S) are fp32; a chunk a row cannot see gets lse -inf and output 0."""
    pid_s = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    Hkv = Hq // group
    b = (pid_bhk // Hkv).to(tl.int64)
    hk = (pid_bhk % Hkv).to(tl.int64)
    r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # row = g * Lq + i
    row_ok = r < group * Lq
    h = hk * group + r // Lq  # query head of each row
    i = r % Lq
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = Q + b * stride_qb + h[:, None] * stride_qh + i[:, None] * stride_qm + offs_d[None, :]
    q = _load_rows(q_ptrs, r, group * Lq, offs_d, HEAD_DIM, BLOCK_D, True)
    if UPCAST:
        q = q.to(tl.float32)
    chunk = tl.cdiv(tl.cdiv(Lk, num_splits), BLOCK_N) * BLOCK_N
    lo = pid_s * chunk
    hi = tl.minimum(lo + chunk, Lk)
    k_ptrs = K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    qk_scale = sm_scale * 1.4426950408889634  # log2 units
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        k = _load_rows(k_ptrs + start * stride_kn, cols, hi, offs_d, HEAD_DIM, BLOCK_D, True)
        v = _load_rows(v_ptrs + start * stride_vn, cols, hi, offs_d, HEAD_DIM, BLOCK_D, True)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        ok = cols[None, :] < hi
        if CAUSAL:
            ok = ok & (cols[None, :] <= i[:, None] + (Lk - Lq))
        s = tl.where(ok, s, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc, v)
    empty = l_i == 0.0
    part = ((b * Hq + h) * Lq + i) * num_splits + pid_s  # (B, Hq, Lq, S) flat index per row
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_ptrs = OPart + part[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(o_ptrs, out, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LsePart + part, lse, mask=row_ok)


@triton.jit
def _merge_kernel(OPart, LsePart, O, num_splits, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_S: tl.constexpr):
    """One program per (b, h, i) row: merge the S partial outputs by their log-sum-exp.

    O is (B, Hq, Lq, D) contiguous; a row that no chunk could see (causal, Lq > Lk) gets 0."""
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    lse = tl.load(LsePart + row * num_splits + offs_s, mask=offs_s < num_splits, other=float("-inf"))
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse - m)  # (BLOCK_S,), 0 for empty chunks
    parts = tl.load(OPart + (row * num_splits + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                    mask=(offs_s[:, None] < num_splits) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    total = tl.sum(w, axis=0)
    out = tl.sum(parts * w[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(O + row * HEAD_DIM + offs_d, out.to(O.dtype.element_ty), mask=offs_d < HEAD_DIM)


_SPLIT = autotune_by_arch(_split_kernel, DECODE_CONFIGS, DECODE_CONFIGS_WIDE, TUNE_KEY,
                          INTERPRET_DECODE)


def default_num_splits(batch_kv_heads: int, row_blocks: int, lk: int, device: torch.device) -> int:
    """Enough programs to fill the GPU about twice, each chunk at least 256 keys, at most 64."""
    sms = 16 if interpreting() else torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(2 * sms, batch_kv_heads * row_blocks)
    return max(1, min(want, triton.cdiv(lk, 256), MAX_SPLITS))


def _rows_block(rows: int) -> int:
    """BLOCK_M: the group's G·Lq rows padded to a power of two in [16, 64] (16: tl.dot minimum)."""
    return min(64, max(16, triton.next_power_of_2(rows)))


def _check(q, k, v, num_splits) -> None:
    check_qkv("flash_decode", q, k, v)
    if q.shape[2] > MAX_QUERIES:
        raise ValueError(f"flash_decode: Lq={q.shape[2]} > {MAX_QUERIES}; use flash_attention")
    if num_splits is not None and not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"flash_decode: num_splits must be in 1..{MAX_SPLITS}, got {num_splits}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("flash_decode is forward-only: call it under torch.no_grad() "
                         "or pass tensors that do not require grad")


def flash_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                 softmax_scale: float | None = None, num_splits: int | None = None,
                 causal: bool = False) -> torch.Tensor:
    """Attention of a few queries q (B, Hq, Lq<=16, D) over a KV cache k/v (B, Hkv, Lk, D).

    num_splits: KV chunks computed in parallel (default: `default_num_splits`). Forward only."""
    _check(q, k, v, num_splits)
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    group = hq // hkv
    block_m = _rows_block(group * lq)
    row_blocks = triton.cdiv(group * lq, block_m)
    splits = num_splits or default_num_splits(b * hkv, row_blocks, lk, q.device)
    o_part = torch.empty((b, hq, lq, splits, d), device=q.device, dtype=torch.float32)
    lse_part = torch.empty((b, hq, lq, splits), device=q.device, dtype=torch.float32)
    pick_tuner(_SPLIT, q)[(splits, b * hkv, row_blocks)](
        q, k, v, o_part, lse_part, default_scale(d, softmax_scale), *q.stride()[:3],
        *k.stride()[:3], *v.stride()[:3], hq, group, lq, lk, splits,
        HEAD_DIM=d, BLOCK_D=block_d(d), BLOCK_M=block_m, CAUSAL=bool(causal),
        UPCAST=upcast_for(q.dtype))
    o = torch.empty((b, hq, lq, d), device=q.device, dtype=q.dtype)
    _merge_kernel[(b * hq * lq,)](o_part, lse_part, o, splits, HEAD_DIM=d, BLOCK_D=block_d(d),
                                  BLOCK_S=max(2, triton.next_power_of_2(splits)))
    return o


# ---------------------------------------------------------------- ahead-of-time compile specs
_TYPES = {"Q": "*T", "K": "*T", "V": "*T", "O": "*T", "OPart": "*fp32", "LsePart": "*fp32",
          "sm_scale": "fp32"}
_MERGE_CONFIGS = {arch: [triton.Config({}, num_warps=4, num_stages=1)] for arch in ("sm_80", "sm_90")}
_SPLIT_FLAGS = dict(BLOCK_M=64, CAUSAL=True, UPCAST=False)  # BLOCK_M 64: G·Lq >= 33, the worst case
AOT_KERNELS = (
    AotKernel("decode.split", _split_kernel, DECODE_CONFIGS, _TYPES, _SPLIT_FLAGS, head_dims=(64, 128)),
    AotKernel("decode.split", _split_kernel, DECODE_CONFIGS_WIDE, _TYPES, _SPLIT_FLAGS, head_dims=(256,)),
    AotKernel("decode.merge", _merge_kernel, _MERGE_CONFIGS, _TYPES, dict(BLOCK_S=MAX_SPLITS),
              head_dims=(128, 256)),
)
