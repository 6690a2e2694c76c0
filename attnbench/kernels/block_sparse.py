"""Block-sparse attention in Triton: forward and backward over a (query block × key block) layout.

Follows the block-sparse FlashAttention of Dao et al., "FlashAttention" (2022, §3.3) with the
FlashAttention-2 work split (Dao 2023), and Child et al. "Sparse Transformers" (2019) for the
layouts: the (Lq × Lk) score matrix is cut into block × block tiles and only the tiles marked
in `layout` are computed. The layout is turned once, at setup, into a compact index
(`build_block_index`): CSR (for each query block, its key blocks) for the forward and dQ
kernels, and CSC (for each key block, its query blocks) for the dK/dV kernel, so every kernel
loops over the listed blocks only and never reads the dense layout.

Supports
  * q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D), Hkv | Hq (GQA/MQA by head mapping, as in
    flash.py); any Lq, Lk (tail tokens of the last blocks are masked); head dims up to 256;
    float16, bfloat16, float32; gradients for q, k, v.
  * layout: bool (ceil(Lq/block), ceil(Lk/block)), shared by all heads,
    (Hq, ceil(Lq/block), ceil(Lk/block)), one per query head, or (B·Hq, ...), one per
    (batch element, query head) in that order (an input-dependent selection: MoBA, NSA).
    (i, j) True: every token of query block i attends every token of key block j.
  * causal=True additionally applies the token-level bottom-right causal mask
    (query t sees key u iff u <= t + Lk - Lq).
  * block in {16, 32, 64, 128}; the kernels' tiles are min(block, 64) (32 for head dims > 128)
    so big blocks do not mean big register tiles.

Does not support
  * dropout, windows or ALiBi (see flash.py).
  * Queries whose row has no allowed key (an empty layout row, or causal hiding every listed
    key) output 0, and their gradients are 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import (
    AotKernel,
    _load_rows,
    _store_rows,
    autotune_by_arch,
    block_d,
    bwd_preprocess,
    check_qkv,
    default_scale,
    pick_tuner,
    upcast_for,
)
from .configs import BS_DKDV_CONFIGS, BS_DQ_CONFIGS, BS_FWD_CONFIGS, INTERPRET_BLOCK_SPARSE
from .flash import _dkdv_tiles, _dq_tiles, _fwd_tiles

BLOCKS = (16, 32, 64, 128)
TUNE_KEY = ["Lq", "Lk", "HEAD_DIM", "BLOCK", "CAUSAL"]


@dataclass(frozen=True)
class BlockIndex:
    """A block layout as CSR (query block -> key blocks) and CSC (key block -> query blocks).

    Rows are flattened over layout heads: row r = head * n_q_blocks + query block (int32)."""
    block: int
    heads: int  # 1: one layout for all heads; Hq: one per query head; B·Hq: per batch element and head
    n_q_blocks: int
    n_k_blocks: int
    row_ptr: torch.Tensor  # (heads * n_q_blocks + 1,): key blocks of row r are col_idx[row_ptr[r]:row_ptr[r+1]]
    col_idx: torch.Tensor  # (nnz,)
    col_ptr: torch.Tensor  # (heads * n_k_blocks + 1,)
    row_idx: torch.Tensor  # (nnz,)

    @property
    def nnz(self) -> int:
        return self.col_idx.numel()

    @property
    def density(self) -> float:
        """Fraction of block pairs computed: the work relative to dense attention."""
        return self.nnz / (self.heads * self.n_q_blocks * self.n_k_blocks)


def _offsets(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)


def build_block_index(layout: torch.Tensor, *, block: int = 64,
                      device: torch.device | str | None = None) -> BlockIndex:
    """Build the CSR/CSC index of a bool layout (nqb, nkb) or (H, nqb, nkb), once, at setup."""
    if layout.dtype != torch.bool or layout.dim() not in (2, 3):
        raise ValueError(f"build_block_index: layout must be a bool (nqb, nkb) or (H, nqb, nkb) "
                         f"tensor, got {layout.dtype} of shape {tuple(layout.shape)}")
    if block not in BLOCKS:
        raise ValueError(f"build_block_index: block must be one of {BLOCKS}, got {block}")
    lay = (layout if layout.dim() == 3 else layout[None]).to(device or layout.device)
    heads, nqb, nkb = lay.shape
    by_row = lay.nonzero()  # (nnz, 3): (head, q block, k block), row-major = CSR order
    by_col = lay.transpose(1, 2).nonzero()  # (head, k block, q block) = CSC order
    return BlockIndex(block=block, heads=heads, n_q_blocks=nqb, n_k_blocks=nkb,
                      row_ptr=_offsets(lay.sum(2).flatten()), col_idx=by_row[:, 2].to(torch.int32),
                      col_ptr=_offsets(lay.sum(1).flatten()), row_idx=by_col[:, 2].to(torch.int32))


def _tiles(block: int, head_dim: int) -> tuple[int, int]:
    """(big, small) tile sizes: forward and dQ use big×big and big×small, dK/dV small×big."""
    big = min(block, 64 if head_dim <= 128 else 32)
    return big, min(block, 32)


# ---------------------------------------------------------------- kernels
@triton.jit
def _bs_fwd_kernel(Q, K, V, O, LSE, RowPtr, ColIdx, sm_scale,
                   stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                   Hq, group, Lq, Lk, layout_heads, n_q_blocks,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                   UPCAST: tl.constexpr):
    """One program: BLOCK_M rows (inside one query block) of one (batch, query head).

    Grid (cdiv(Lq, BLOCK_M), B*Hq); loops over the key blocks listed for the query block."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = pid_bh % Hq
    hk = (h // group).to(tl.int64)
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * stride_qb + h.to(tl.int64) * stride_qh + rows[:, None] * stride_qm
                   + offs_d[None, :], rows, Lq, offs_d, HEAD_DIM, BLOCK_D, True)
    if UPCAST:
        q = q.to(tl.float32)
    k_ptrs = K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    row = (pid_bh % layout_heads) * n_q_blocks + m0 // BLOCK  # layout_heads 1, Hq or B·Hq
    for idx in range(tl.load(RowPtr + row), tl.load(RowPtr + row + 1)):
        n_lo = tl.load(ColIdx + idx) * BLOCK
        n_hi = tl.minimum(n_lo + BLOCK, Lk)
        if CAUSAL:  # sub-tiles past the last row's diagonal are skipped
            n_hi = tl.minimum(n_hi, m0 + BLOCK_M + Lk - Lq)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, rows,
                                   offs_n, offs_d, n_lo, n_hi, Lq, Lk, 0, 0, qk_scale, 0.0, 0.0, HEAD_DIM,
                                   BLOCK_D, BLOCK_N, True, CAUSAL, False, False, False, False, UPCAST)
    empty = l_i == 0.0  # no listed key visible: output 0, lse +inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_ptrs = O + b * stride_ob + h.to(tl.int64) * stride_oh + rows[:, None] * stride_om + offs_d[None, :]
    _store_rows(o_ptrs, out.to(O.dtype.element_ty), rows, Lq, offs_d, HEAD_DIM, BLOCK_D)
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + pid_bh.to(tl.int64) * Lq + rows, lse, mask=rows < Lq)


@triton.jit
def _bs_dkdv_kernel(Q, K, V, DO, LSE, Delta, DK, DV, ColPtr, RowIdx, sm_scale,
                    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                    stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dm,
                    Hq, group, Lq, Lk, layout_heads, n_k_blocks,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                    UPCAST: tl.constexpr):
    """One program: BLOCK_N keys (inside one key block) of one (batch, KV head); loops over the
    group's query heads and, for each, the query blocks listed for the key block (CSC)."""
    pid_n = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    Hkv = Hq // group
    b = (pid_bhk // Hkv).to(tl.int64)
    hk = (pid_bhk % Hkv).to(tl.int64)
    n0 = pid_n * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(K + b * stride_kb + hk * stride_kh + cols[:, None] * stride_kn + offs_d[None, :],
                   cols, Lk, offs_d, HEAD_DIM, BLOCK_D, True)
    v = _load_rows(V + b * stride_vb + hk * stride_vh + cols[:, None] * stride_vn + offs_d[None, :],
                   cols, Lk, offs_d, HEAD_DIM, BLOCK_D, True)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    first_row = tl.maximum(n0 - (Lk - Lq), 0) // BLOCK_M * BLOCK_M  # causal: rows before see nothing
    for g in range(group):
        h = hk * group + g
        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
        do_ptrs = DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :]
        row_base = (b * Hq + h) * Lq
        col = ((b * Hq + h) % layout_heads) * n_k_blocks + n0 // BLOCK
        for idx in range(tl.load(ColPtr + col), tl.load(ColPtr + col + 1)):
            m_lo = tl.load(RowIdx + idx) * BLOCK
            m_hi = tl.minimum(m_lo + BLOCK, Lq)
            if CAUSAL:
                m_lo = tl.maximum(m_lo, first_row)
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptrs, do_ptrs, LSE + row_base, Delta + row_base,
                                 stride_qm, stride_dm, cols, offs_m, offs_d, m_lo, m_hi, Lq, Lk, 0, 0,
                                 qk_scale, 0.0, 0.0, HEAD_DIM, BLOCK_D, BLOCK_M, CAUSAL, False, False,
                                 False, False, UPCAST)
    out = (b * Hkv + hk) * Lk * HEAD_DIM + cols[:, None] * HEAD_DIM + offs_d[None, :]
    _store_rows(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), cols, Lk, offs_d, HEAD_DIM, BLOCK_D)
    _store_rows(DV + out, dv.to(DV.dtype.element_ty), cols, Lk, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _bs_dq_kernel(Q, K, V, DO, LSE, Delta, DQ, RowPtr, ColIdx, sm_scale,
                  stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dm,
                  Hq, group, Lq, Lk, layout_heads, n_q_blocks,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                  UPCAST: tl.constexpr):
    """One program: dQ of BLOCK_M rows of one (batch, query head) over the listed key blocks."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    hk = h // group
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :],
                   rows, Lq, offs_d, HEAD_DIM, BLOCK_D, True)
    do = _load_rows(DO + b * stride_db + h * stride_dh + rows[:, None] * stride_dm + offs_d[None, :],
                    rows, Lq, offs_d, HEAD_DIM, BLOCK_D, True)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * Lq + rows, mask=rows < Lq, other=0.0)
    delta = tl.load(Delta + pid_bh.to(tl.int64) * Lq + rows, mask=rows < Lq, other=0.0)
    k_ptrs = K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    row = (pid_bh % layout_heads) * n_q_blocks + m0 // BLOCK  # layout_heads 1, Hq or B·Hq
    for idx in range(tl.load(RowPtr + row), tl.load(RowPtr + row + 1)):
        n_lo = tl.load(ColIdx + idx) * BLOCK
        n_hi = tl.minimum(n_lo + BLOCK, Lk)
        if CAUSAL:
            n_hi = tl.minimum(n_hi, m0 + BLOCK_M + Lk - Lq)
        dq = _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n,
                       offs_d, n_lo, n_hi, Lq, Lk, 0, 0, sm_scale * 1.4426950408889634, 0.0, 0.0, HEAD_DIM,
                       BLOCK_D, BLOCK_N, True, CAUSAL, False, False, False, False, UPCAST)
    out = pid_bh.to(tl.int64) * Lq * HEAD_DIM + rows[:, None] * HEAD_DIM + offs_d[None, :]
    _store_rows(DQ + out, (dq * sm_scale).to(DQ.dtype.element_ty), rows, Lq, offs_d, HEAD_DIM, BLOCK_D)


# ---------------------------------------------------------------- launchers
# one list per kernel serves every head dim: the tiles shrink with the head dim instead (_tiles)
_FWD = autotune_by_arch(_bs_fwd_kernel, BS_FWD_CONFIGS, BS_FWD_CONFIGS, TUNE_KEY, INTERPRET_BLOCK_SPARSE)
_DKDV = autotune_by_arch(_bs_dkdv_kernel, BS_DKDV_CONFIGS, BS_DKDV_CONFIGS, TUNE_KEY,
                         INTERPRET_BLOCK_SPARSE)
_DQ = autotune_by_arch(_bs_dq_kernel, BS_DQ_CONFIGS, BS_DQ_CONFIGS, TUNE_KEY, INTERPRET_BLOCK_SPARSE)


@dataclass(frozen=True)
class _Spec:
    index: BlockIndex
    causal: bool
    scale: float

    def runtime(self, q, k) -> tuple:
        """Hq, group, Lq, Lk, layout_heads: the shared scalar arguments of the kernels."""
        return q.shape[1], q.shape[1] // k.shape[1], q.shape[2], k.shape[2], self.index.heads


def _strides(*tensors: torch.Tensor) -> tuple:
    return tuple(s for t in tensors for s in t.stride()[:3])


def _meta(spec: _Spec, q, block_m: int, block_n: int) -> dict:
    d = q.shape[-1]
    return dict(HEAD_DIM=d, BLOCK_D=block_d(d), BLOCK=spec.index.block, BLOCK_M=block_m,
                BLOCK_N=block_n, CAUSAL=spec.causal, UPCAST=upcast_for(q.dtype))


def _forward(q, k, v, spec: _Spec):
    b, hq, lq, d = q.shape
    idx, (big, _) = spec.index, _tiles(spec.index.block, d)
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty((b, hq, lq), device=q.device, dtype=torch.float32)
    pick_tuner(_FWD, q)[(triton.cdiv(lq, big), b * hq)](
        q, k, v, o, lse, idx.row_ptr, idx.col_idx, spec.scale, *_strides(q, k, v, o),
        *spec.runtime(q, k), idx.n_q_blocks, **_meta(spec, q, big, big))
    return o, lse


def _backward(do, q, k, v, o, lse, spec: _Spec):
    b, hq, lq, d = q.shape
    idx, (big, small) = spec.index, _tiles(spec.index.block, d)
    do = do.contiguous()
    delta = bwd_preprocess(o, do)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    pick_tuner(_DKDV, q)[(triton.cdiv(k.shape[2], big), b * k.shape[1])](
        q, k, v, do, lse, delta, dk, dv, idx.col_ptr, idx.row_idx, spec.scale,
        *_strides(q, k, v, do), *spec.runtime(q, k), idx.n_k_blocks, **_meta(spec, q, small, big))
    pick_tuner(_DQ, q)[(triton.cdiv(lq, big), b * hq)](
        q, k, v, do, lse, delta, dq, idx.row_ptr, idx.col_idx, spec.scale,
        *_strides(q, k, v, do), *spec.runtime(q, k), idx.n_q_blocks, **_meta(spec, q, big, small))
    return dq, dk, dv


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec: _Spec):
        o, lse = _forward(q, k, v, spec)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.spec = spec
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        return (*_backward(do, q, k, v, o, lse, ctx.spec), None)


def _resolve_index(q, k, layout, block) -> BlockIndex:
    if isinstance(layout, BlockIndex):
        if block is not None and block != layout.block:
            raise ValueError(f"block_sparse_attention: block={block} but the index was built "
                             f"with block={layout.block}")
        index = layout
    else:
        index = build_block_index(layout, block=block or 64, device=q.device)
    lq, lk, blk = q.shape[2], k.shape[2], index.block
    want = (triton.cdiv(lq, blk), triton.cdiv(lk, blk))
    if (index.n_q_blocks, index.n_k_blocks) != want:
        raise ValueError(f"block_sparse_attention: layout has {index.n_q_blocks}×{index.n_k_blocks} "
                         f"blocks; Lq={lq}, Lk={lk}, block={blk} need {want[0]}×{want[1]}")
    if index.heads not in (1, q.shape[1], q.shape[0] * q.shape[1]):
        raise ValueError(f"block_sparse_attention: layout has {index.heads} heads; "
                         f"use 1, Hq={q.shape[1]} or B·Hq={q.shape[0] * q.shape[1]}")
    if index.row_ptr.device != q.device:
        raise ValueError(f"block_sparse_attention: index on {index.row_ptr.device}, q on {q.device}; "
                         "build it with device=q.device")
    return index


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           layout: torch.Tensor | BlockIndex, *, block: int | None = None,
                           causal: bool = False, softmax_scale: float | None = None) -> torch.Tensor:
    """Attention restricted to the (query block, key block) pairs of `layout` -> (B, Hq, Lq, D).

    layout: bool (nqb, nkb) / (Hq, nqb, nkb) / (B·Hq, nqb, nkb), or a BlockIndex from build_block_index (build it
    once at setup: the index is what the kernels read). block: default 64, or the index's."""
    check_qkv("block_sparse_attention", q, k, v)
    index = _resolve_index(q, k, layout, block)
    spec = _Spec(index, bool(causal), default_scale(q.shape[-1], softmax_scale))
    return _BlockSparseAttention.apply(q, k, v, spec)


# ---------------------------------------------------------------- ahead-of-time compile specs
_TYPES = {name: "*T" for name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
_TYPES.update(LSE="*fp32", Delta="*fp32", RowPtr="*i32", ColIdx="*i32", ColPtr="*i32",
              RowIdx="*i32", sm_scale="fp32")


def _aot_kernels() -> tuple[AotKernel, ...]:
    """Each kernel at block 64 (its largest tiles), once per tile regime of `_tiles`."""
    specs = []
    for dims in ((64, 128), (256,)):
        big, small = _tiles(64, dims[0])
        for name, fn, configs, (bm, bn) in (
                ("block_sparse.fwd", _bs_fwd_kernel, BS_FWD_CONFIGS, (big, big)),
                ("block_sparse.bwd_dkdv", _bs_dkdv_kernel, BS_DKDV_CONFIGS, (small, big)),
                ("block_sparse.bwd_dq", _bs_dq_kernel, BS_DQ_CONFIGS, (big, small))):
            flags = dict(BLOCK=64, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=True, UPCAST=False)
            specs.append(AotKernel(name, fn, configs, _TYPES, flags, head_dims=dims))
    return tuple(specs)


AOT_KERNELS = _aot_kernels()
