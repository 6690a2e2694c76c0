"""Split-k decoding of DeepSeek Sparse Attention (DSA, DeepSeek-V3.2) over the MLA latent cache.

Each query attends only to the cache rows its indexer selected: `sparse_indices` (B, Lq, topk)
int32/int64 hold rows of the flat cache kv (slots, r + dr) = [c_KV | k_pe] — for a paged cache
the slot page·page_size + offset, as flashinfer's `dsa_paged` definitions encode them — and −1
for padding. In the absorbed form every head scores the same rows:
s = [q_lat | q_pe]·kvᵀ·scale, o_lat = softmax(s)·c_KV (B, H, Lq, r), and the base-2
log-sum-exp of the scaled logits (B, H, Lq) (−inf for a row with no valid index, its output 0).

One program: BLOCK_M heads of one (batch, query) over one chunk of the topk list, in BLOCK_N
index tiles: the indices are loaded, the rows gathered (each row read once per head block and used
twice, for scores and output), −1 masked. Chunks (`num_splits`) write normalised partial outputs
and their lse, merged after the kernel (mla_decode.merge_splits), as in Flash-Decoding.

Supports: q (B, H, Lq <= 16, r + dr), kv (slots, r + dr) with a contiguous last dim, r <= 512,
dr <= 128, float16, bfloat16, float32 (TF32 dots on GPU). Does not support: backward, indices
that differ per head. The indexer, top-k and the projections are the caller's (variants/dsa.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    AotKernel,
    _load_rows,
    _online_softmax_step,
    arch_of,
    autotune_by_arch,
    block_d,
    check_device,
    interpreting,
    upcast_for,
)
from .mla_decode import MLA_CONFIGS, merge_splits

MAX_QUERIES = 16
MAX_SPLITS = 64
MAX_RANK = 512
MAX_ROPE = 128
TUNE_KEY = ["topk", "num_splits", "HEAD_DIM", "BLOCK_M"]
# The same tiles as the MLA decode kernel (one (BLOCK_M, r) query tile, (BLOCK_N, r) row tiles):
# checked with `python -m attnbench.kernels.aot` at r = 512, dr = 64.
DSA_CONFIGS = MLA_CONFIGS
INTERPRET_DSA = triton.Config({"BLOCK_N": 32}, num_warps=4, num_stages=1)


@triton.jit
def _dsa_split_kernel(Q, KV, Idx, OPart, LsePart, sm_scale,
                      stride_qb, stride_qh, stride_qm, stride_kn, stride_ib, stride_im,
                      H, Lq, topk, num_splits,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROPE_DIM: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      UPCAST: tl.constexpr):
    """Grid (num_splits, B·Lq, cdiv(H, BLOCK_M)). HEAD_DIM = r, ROPE_DIM = dr. OPart (B, H, Lq, S, r)
    and LsePart (B, H, Lq, S) fp32; a chunk with no valid index gets lse −inf and output 0."""
    pid_s = tl.program_id(0)
    bq = tl.program_id(1)
    b = (bq // Lq).to(tl.int64)
    i = bq % Lq
    h = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)
    q_rows = Q + b * stride_qb + h[:, None].to(tl.int64) * stride_qh + i * stride_qm
    q_lat = _load_rows(q_rows + offs_d[None, :], h, H, offs_d, HEAD_DIM, BLOCK_D, True)  # (M, r)
    q_pe = _load_rows(q_rows + HEAD_DIM + offs_r[None, :], h, H, offs_r, ROPE_DIM, BLOCK_R, True)  # (M, dr)
    if UPCAST:
        q_lat = q_lat.to(tl.float32)
        q_pe = q_pe.to(tl.float32)
    chunk = tl.cdiv(tl.cdiv(topk, num_splits), BLOCK_N) * BLOCK_N
    lo = pid_s * chunk
    hi = tl.minimum(lo + chunk, topk)
    idx_row = Idx + b * stride_ib + i * stride_im
    qk_scale = sm_scale * 1.4426950408889634  # log2 units
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        slot = tl.load(idx_row + cols, mask=cols < hi, other=-1).to(tl.int64)
        valid = slot >= 0
        rows = KV + tl.where(valid, slot, 0)[:, None] * stride_kn
        c = tl.load(rows + offs_d[None, :], mask=valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        k_pe = tl.load(rows + HEAD_DIM + offs_r[None, :], mask=valid[:, None] & (offs_r[None, :] < ROPE_DIM),
                       other=0.0)
        if UPCAST:
            c = c.to(tl.float32)
            k_pe = k_pe.to(tl.float32)
        s = (tl.dot(q_lat, tl.trans(c)) + tl.dot(q_pe, tl.trans(k_pe))) * qk_scale  # (M, N)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc, c)  # the gathered c is also V
    empty = l_i == 0.0
    part = ((b * H + h) * Lq + i) * num_splits + pid_s
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(OPart + part[:, None] * HEAD_DIM + offs_d[None, :], out,
             mask=(h[:, None] < H) & (offs_d[None, :] < HEAD_DIM))
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LsePart + part, lse, mask=h < H)


_TUNERS = autotune_by_arch(_dsa_split_kernel, DSA_CONFIGS, DSA_CONFIGS, TUNE_KEY, INTERPRET_DSA)


def default_num_splits(programs: int, topk: int, device: torch.device) -> int:
    """Enough programs to fill the GPU about twice, each chunk at least 128 indices, at most 64."""
    sms = 16 if interpreting() else torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, programs), triton.cdiv(topk, 128), MAX_SPLITS))


def _check(q: torch.Tensor, kv: torch.Tensor, idx: torch.Tensor, rank: int, num_splits: int | None) -> None:
    if q.dim() != 4 or kv.dim() != 2 or idx.dim() != 3:
        raise ValueError(f"dsa_decode: q must be (B, H, Lq, r + dr), kv (slots, r + dr), sparse_indices "
                         f"(B, Lq, topk); got {tuple(q.shape)}, {tuple(kv.shape)}, {tuple(idx.shape)}")
    width = q.shape[-1]
    if kv.shape[-1] != width or tuple(idx.shape[:2]) != (q.shape[0], q.shape[2]):
        raise ValueError(f"dsa_decode: q {tuple(q.shape)}, kv {tuple(kv.shape)} and sparse_indices "
                         f"{tuple(idx.shape)} disagree on r + dr, B or Lq")
    if not 1 <= rank <= MAX_RANK or not 1 <= width - rank <= MAX_ROPE:
        raise ValueError(f"dsa_decode: needs 1 <= rank <= {MAX_RANK} and 1 <= rope dim <= {MAX_ROPE}; "
                         f"got rank {rank}, rope dim {width - rank}")
    if q.shape[2] > MAX_QUERIES:
        raise ValueError(f"dsa_decode: Lq={q.shape[2]} > {MAX_QUERIES}; this is a decode kernel")
    if num_splits is not None and not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"dsa_decode: num_splits must be in 1..{MAX_SPLITS}, got {num_splits}")
    if q.dtype != kv.dtype or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dsa_decode: q and kv need one dtype of float16, bfloat16, float32; "
                         f"got {q.dtype}, {kv.dtype}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"dsa_decode: sparse_indices must be int32 or int64, got {idx.dtype}")
    if q.stride(-1) != 1 or kv.stride(-1) != 1 or idx.stride(-1) != 1 or min(q.shape) == 0 or idx.shape[-1] == 0:
        raise ValueError("dsa_decode: non-empty tensors with a contiguous last dimension needed")
    if torch.is_grad_enabled() and (q.requires_grad or kv.requires_grad):
        raise ValueError("dsa_decode is forward-only: call it under torch.no_grad() or pass tensors that "
                         "do not require grad")
    check_device("dsa_decode", q, kv, idx)


def dsa_decode(q: torch.Tensor, kv: torch.Tensor, sparse_indices: torch.Tensor, *, rank: int,
               softmax_scale: float | None = None, num_splits: int | None = None,
               return_lse: bool = False):
    """Absorbed MLA attention of q = [q_lat | q_pe] (B, H, Lq<=16, r + dr) over the rows
    `sparse_indices` (B, Lq, topk; −1 = padding) of the flat latent cache kv (slots, r + dr):
    o_lat (B, H, Lq, r) in q's dtype, and with return_lse the base-2 lse (B, H, Lq) fp32.
    softmax_scale defaults to (r + dr)^-0.5 (MLA and flashinfer use 1/√(dn + dr): pass it)."""
    _check(q, kv, sparse_indices, rank, num_splits)
    b, h, lq, width = q.shape
    topk = sparse_indices.shape[-1]
    block_m = 16 if h <= 16 else 32
    head_blocks = triton.cdiv(h, block_m)
    splits = num_splits or default_num_splits(b * lq * head_blocks, topk, q.device)
    o_part = torch.empty((b, h, lq, splits, rank), device=q.device, dtype=torch.float32)
    lse_part = torch.empty((b, h, lq, splits), device=q.device, dtype=torch.float32)
    scale = width ** -0.5 if softmax_scale is None else float(softmax_scale)
    _TUNERS[arch_of(q.device), False][(splits, b * lq, head_blocks)](
        q, kv, sparse_indices, o_part, lse_part, scale, *q.stride()[:3], kv.stride(0), *sparse_indices.stride()[:2],
        h, lq, topk, splits, HEAD_DIM=rank, BLOCK_D=block_d(rank), ROPE_DIM=width - rank,
        BLOCK_R=block_d(width - rank), BLOCK_M=block_m, UPCAST=upcast_for(q.dtype))
    out = merge_splits(o_part, lse_part, q.dtype)
    if not return_lse:
        return out
    m = lse_part.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    total = torch.exp2(lse_part - m).sum(-1)
    return out, torch.where(total > 0, m[..., 0] + torch.log2(total), torch.full_like(total, float("-inf")))


# ---------------------------------------------------------------- ahead-of-time compile specs
_TYPES = {"Q": "*T", "KV": "*T", "Idx": "*i32", "OPart": "*fp32", "LsePart": "*fp32", "sm_scale": "fp32"}
AOT_KERNELS = (
    AotKernel("dsa_decode.split", _dsa_split_kernel, DSA_CONFIGS, _TYPES,
              dict(ROPE_DIM=64, BLOCK_R=64, BLOCK_M=32, UPCAST=False), head_dims=(512,)),
)
