"""Split-KV decoding of multi-head latent attention (MLA, DeepSeek-V2/V3) in the absorbed form.

With W_UK absorbed into the query, every head attends to the same latent cache
kv = [c_KV | k_pe] (B, Lk, r + dr): scores s = [q_lat | q_pe] · kvᵀ · scale, output
o_lat = softmax(s) · c_KV (B, H, Lq, r). This is MQA with Dqk = r + dr and Dv = r whose V is the
first r columns of K, so one program loads each cache tile once and uses it twice (scores and
output). As in Flash-Decoding (decode.py) the cache is cut into `num_splits` chunks processed in
parallel; each chunk writes a normalised partial output and its log-sum-exp (base 2), merged
after the kernel: out = Σ_s 2^(lse_s - M)·o_s / Σ_s 2^(lse_s - M). The merge runs in torch (a
few element-wise ops on B·H·Lq·S·r floats).

Rows: all H heads × Lq queries of one batch element are the rows of one tile (row = h·Lq + i),
BLOCK_M = 16 or 32 rows a program, so the cache is read once per row block, not once per head.
Work per decoded token: 2·H·Lk·(2r + dr) FLOPs over Lk·(r + dr) cache elements read.

Supports: q (B, H, Lq <= 16, r + dr), kv (B, 1, Lk, r + dr) (or (B, Lk, r + dr)), r <= 512,
dr <= 128, float16, bfloat16, float32 (TF32 dots on GPU), causal=True (bottom-right aligned).
Does not support: backward (no autograd: inputs that require grad raise), paged caches.
The projections (q_nope·W_UK, o_lat·W_UVᵀ) are the caller's (variants/mla.py does them in torch).
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

MAX_QUERIES = 16
MAX_SPLITS = 64
MAX_RANK = 512
MAX_ROPE = 128
TUNE_KEY = ["Lk", "num_splits", "HEAD_DIM", "BLOCK_M"]
C = triton.Config
# Tiles: BLOCK_N keys a step (the row tile BLOCK_M is the launcher's, compiled at 32, the worst
# case). Checked with `python -m attnbench.kernels.aot` at r = 512, dr = 64 (fp16, bf16):
MLA_CONFIGS = {
    "sm_80": [C({"BLOCK_N": 32}, num_warps=8, num_stages=2), C({"BLOCK_N": 16}, num_warps=4, num_stages=2)],
    "sm_90": [C({"BLOCK_N": 32}, num_warps=8, num_stages=2), C({"BLOCK_N": 16}, num_warps=4, num_stages=2)],
}
INTERPRET_MLA = C({"BLOCK_N": 32}, num_warps=4, num_stages=1)


@triton.jit
def _mla_split_kernel(Q, KV, OPart, LsePart, sm_scale,
                      stride_qb, stride_qh, stride_qm, stride_kb, stride_kn,
                      H, Lq, Lk, num_splits,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROPE_DIM: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      CAUSAL: tl.constexpr, UPCAST: tl.constexpr):
    """One program: one key chunk × BLOCK_M (head, query) rows of one batch element.

    HEAD_DIM is the latent rank r (the output's width), ROPE_DIM the rope part dr; both q's and
    kv's rows are [r | dr]. Grid (num_splits, B, cdiv(H·Lq, BLOCK_M)). OPart (B, H, Lq, S, r) and
    LsePart (B, H, Lq, S) are fp32; a chunk a row cannot see gets lse -inf and output 0."""
    pid_s = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # row = h * Lq + i
    n_rows = H * Lq
    h = (r // Lq).to(tl.int64)
    i = r % Lq
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, BLOCK_R)
    q_rows = Q + b * stride_qb + h[:, None] * stride_qh + i[:, None] * stride_qm
    q_lat = _load_rows(q_rows + offs_d[None, :], r, n_rows, offs_d, HEAD_DIM, BLOCK_D, True)  # (M, r)
    q_pe = _load_rows(q_rows + HEAD_DIM + offs_r[None, :], r, n_rows, offs_r, ROPE_DIM, BLOCK_R, True)  # (M, dr)
    if UPCAST:
        q_lat = q_lat.to(tl.float32)
        q_pe = q_pe.to(tl.float32)
    chunk = tl.cdiv(tl.cdiv(Lk, num_splits), BLOCK_N) * BLOCK_N
    lo = pid_s * chunk
    hi = tl.minimum(lo + chunk, Lk)
    kv_rows = KV + b * stride_kb + offs_n[:, None] * stride_kn
    qk_scale = sm_scale * 1.4426950408889634  # log2 units
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        c = _load_rows(kv_rows + start * stride_kn + offs_d[None, :], cols, hi, offs_d, HEAD_DIM, BLOCK_D, True)
        k_pe = _load_rows(kv_rows + start * stride_kn + HEAD_DIM + offs_r[None, :], cols, hi, offs_r,
                          ROPE_DIM, BLOCK_R, True)
        if UPCAST:
            c = c.to(tl.float32)
            k_pe = k_pe.to(tl.float32)
        s = (tl.dot(q_lat, tl.trans(c)) + tl.dot(q_pe, tl.trans(k_pe))) * qk_scale  # (M, N)
        ok = cols[None, :] < hi
        if CAUSAL:
            ok = ok & (cols[None, :] <= i[:, None] + (Lk - Lq))
        s = tl.where(ok, s, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc, c)  # the same tile c is V
    empty = l_i == 0.0
    part = ((b * H + h) * Lq + i) * num_splits + pid_s  # (B, H, Lq, S) flat index per row
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(OPart + part[:, None] * HEAD_DIM + offs_d[None, :], out,
             mask=(r[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LsePart + part, lse, mask=r < n_rows)


_TUNERS = autotune_by_arch(_mla_split_kernel, MLA_CONFIGS, MLA_CONFIGS, TUNE_KEY, INTERPRET_MLA)


def default_num_splits(row_programs: int, lk: int, device: torch.device) -> int:
    """Enough programs to fill the GPU about twice, each chunk at least 256 keys, at most 64."""
    sms = 16 if interpreting() else torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(2 * sms, row_programs)
    return max(1, min(want, triton.cdiv(lk, 256), MAX_SPLITS))


def _check(q: torch.Tensor, kv: torch.Tensor, rank: int, num_splits: int | None) -> None:
    if q.dim() != 4 or kv.dim() != 3:
        raise ValueError(f"mla_decode: q must be (B, H, Lq, r + dr) and kv (B, 1, Lk, r + dr) or (B, Lk, r + dr); "
                         f"got {tuple(q.shape)} and {tuple(kv.shape)}")
    width = q.shape[-1]
    if kv.shape[-1] != width or kv.shape[0] != q.shape[0]:
        raise ValueError(f"mla_decode: q {tuple(q.shape)} and kv {tuple(kv.shape)} must agree on B and r + dr")
    if not 1 <= rank <= MAX_RANK or not 1 <= width - rank <= MAX_ROPE:
        raise ValueError(f"mla_decode: needs 1 <= rank <= {MAX_RANK} and 1 <= rope dim <= {MAX_ROPE}; "
                         f"got rank {rank}, rope dim {width - rank}")
    if q.shape[2] > MAX_QUERIES:
        raise ValueError(f"mla_decode: Lq={q.shape[2]} > {MAX_QUERIES}; prefill with the naive form")
    if num_splits is not None and not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"mla_decode: num_splits must be in 1..{MAX_SPLITS}, got {num_splits}")
    if q.dtype != kv.dtype or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"mla_decode: q and kv need one dtype of float16, bfloat16, float32; "
                         f"got {q.dtype}, {kv.dtype}")
    if q.stride(-1) != 1 or kv.stride(-1) != 1 or min(q.shape) == 0 or kv.shape[1] == 0:
        raise ValueError("mla_decode: non-empty tensors with a contiguous last dimension needed")
    if torch.is_grad_enabled() and (q.requires_grad or kv.requires_grad):
        raise ValueError("mla_decode is forward-only: call it under torch.no_grad() "
                         "or pass tensors that do not require grad")
    check_device("mla_decode", q, kv)


def merge_splits(o_part: torch.Tensor, lse_part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, Lq, S, r) partial outputs and (B, H, Lq, S) base-2 log-sum-exps -> (B, H, Lq, r);
    a row no chunk could see (causal, Lq > Lk) is 0."""
    m = lse_part.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    w = torch.exp2(lse_part - m)  # (B, H, Lq, S), 0 for empty chunks
    total = w.sum(dim=-1, keepdim=True)
    out = (o_part * w.unsqueeze(-1)).sum(dim=-2) / torch.where(total == 0, torch.ones_like(total), total)
    return out.to(dtype)


def mla_decode(q: torch.Tensor, kv: torch.Tensor, *, rank: int, softmax_scale: float | None = None,
               num_splits: int | None = None, causal: bool = False) -> torch.Tensor:
    """Absorbed MLA attention of q = [q_lat | q_pe] (B, H, Lq<=16, r + dr) over the latent cache
    kv = [c_KV | k_pe] (B, 1, Lk, r + dr): softmax(q·kvᵀ·scale)·c_KV, (B, H, Lq, r) in q's dtype.

    softmax_scale defaults to (r + dr)^-0.5 (MLA uses (dn + dr)^-0.5: pass it). Forward only."""
    kv3 = kv[:, 0] if kv.dim() == 4 and kv.shape[1] == 1 else kv
    _check(q, kv3, rank, num_splits)
    b, h, lq, width = q.shape
    lk = kv3.shape[1]
    block_m = 16 if h * lq <= 16 else 32
    row_blocks = triton.cdiv(h * lq, block_m)
    splits = num_splits or default_num_splits(b * row_blocks, lk, q.device)
    o_part = torch.empty((b, h, lq, splits, rank), device=q.device, dtype=torch.float32)
    lse_part = torch.empty((b, h, lq, splits), device=q.device, dtype=torch.float32)
    scale = width ** -0.5 if softmax_scale is None else float(softmax_scale)
    _TUNERS[arch_of(q.device), False][(splits, b, row_blocks)](
        q, kv3, o_part, lse_part, scale, *q.stride()[:3], kv3.stride(0), kv3.stride(1), h, lq, lk, splits,
        HEAD_DIM=rank, BLOCK_D=block_d(rank), ROPE_DIM=width - rank, BLOCK_R=block_d(width - rank),
        BLOCK_M=block_m, CAUSAL=bool(causal), UPCAST=upcast_for(q.dtype))
    return merge_splits(o_part, lse_part, q.dtype)


# ---------------------------------------------------------------- ahead-of-time compile specs
_TYPES = {"Q": "*T", "KV": "*T", "OPart": "*fp32", "LsePart": "*fp32", "sm_scale": "fp32"}
AOT_KERNELS = (
    AotKernel("mla_decode.split", _mla_split_kernel, MLA_CONFIGS, _TYPES,
              dict(ROPE_DIM=64, BLOCK_R=64, BLOCK_M=32, CAUSAL=True, UPCAST=False), head_dims=(512,)),
)
