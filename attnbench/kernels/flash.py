"""FlashAttention-2 in Triton: forward and backward, causal / window (+ sinks) / ALiBi / softcap, GQA.

Follows Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning"
(2023) and the Triton tutorial 06-fused-attention: the forward streams key tiles through an
online softmax (fp32 running max, normaliser and accumulator) and saves the log-sum-exp; the
backward recomputes the scores tile by tile: a preprocess kernel computes delta = rowsum(dO∘O),
one kernel per key block accumulates dK and dV, and a separate kernel per query block
accumulates dQ (no atomics).

Supports
  * q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D) like F.scaled_dot_product_attention; Hkv divides
    Hq (MHA, GQA, MQA): query head h reads KV head h // (Hq // Hkv); K and V are never repeated
    in memory, and dK/dV sum over the group's query heads inside the dK/dV kernel.
  * any Lq, Lk >= 1 (tails masked), Lq != Lk, head dims 1..256 (padded to a power of two with
    masked loads, so 40, 80, 96 work), float16, bfloat16 and float32 (tf32 dots on the GPU).
  * causal=True aligned bottom-right: query i sees key j iff j <= i + (Lk - Lq).
  * window=w (sliding window), with i' = i + (Lk - Lq): causal sees i' - w < j <= i' (w keys
    counting its own position); non-causal sees |i' - j| < w (w - 1 keys on each side).
  * alibi_slopes (Hq,) fp32: the scaled score gets + (-slope_h · |i' - j|), the ALiBi /
    flash-attn convention (for causal rows that is slope_h · (j - i')).
  * softcap=c > 0 (Gemma-2): the scaled score s becomes c·tanh(s/c) before the mask; the
    backward multiplies dS by 1 - tanh².
  * sinks=N (StreamingLLM): keys j < N are visible to every query besides the window (still
    j <= i' when causal), read as extra key tiles outside the band; sink_logits (Hq,) fp32: a
    learned per-head logit whose exp joins the softmax denominator (a key with value 0), folded
    into the saved log-sum-exp so the backward needs nothing more (no gradient for it).
  * key tiles outside the causal/window band are skipped by the loop bounds; tiles inside the
    band for every row of a query block run without masks (forward and dQ).

Does not support
  * dropout, arbitrary masks or biases (see block_sparse.py for block masks), variable-length
    (packed) batches, gradients for alibi_slopes (they are constants), head dims above 256.
  * Queries that see no key (causal with Lq > Lk, or a window past the keys) output 0.
  * softcap together with alibi_slopes (the backward reads tanh back from P; no model uses both),
    gradients for sink_logits (constants, like the slopes).

Caution: the log-sum-exp is kept in base 2 (see _common.py); fp32 inputs use tf32 tensor
cores on the GPU (error ~1e-3), and exact fp32 math only under TRITON_INTERPRET=1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import (
    AotKernel,
    _alibi,
    _key_band,
    _load_rows,
    _query_band,
    _score_scales,
    _sink_tiles,
    _store_rows,
    _tanh,
    _visible_or_sink,
    autotune_by_arch,
    block_d,
    bwd_preprocess,
    check_qkv,
    default_scale,
    pick_tuner,
    upcast_for,
)
from .configs import (
    DKDV_CONFIGS,
    DKDV_CONFIGS_WIDE,
    DQ_CONFIGS,
    DQ_CONFIGS_WIDE,
    FWD_CONFIGS,
    FWD_CONFIGS_WIDE,
    FWD_CONFIGS_WIDE_MODS,
    INTERPRET_DKDV,
    INTERPRET_DQ,
    INTERPRET_FWD,
)

# ---------------------------------------------------------------- autotuning (lists: configs.py)
TUNE_KEY = ["Lq", "Lk", "HEAD_DIM", "CAUSAL", "HAS_WINDOW", "HAS_ALIBI", "SOFTCAP", "HAS_SINKS", "HAS_SINK_LOGIT"]


# ---------------------------------------------------------------- forward
@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d,
               lo, hi, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
               UPCAST: tl.constexpr):
    """Online-softmax update over key tiles [lo, hi); MASKED applies tails, causal, window, sinks."""
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        k = _load_rows(k_ptrs + start * stride_kn, cols, Lk, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        v = _load_rows(v_ptrs + start * stride_vn, cols, Lk, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units (softcap: s/cap)
        if SOFTCAP:
            s = _tanh(s) * cap_log2
        if HAS_ALIBI:
            s += _alibi(rows[:, None], cols[None, :], Lq, Lk, slope_log2)
        if MASKED:
            s = tl.where(_visible_or_sink(rows[:, None], cols[None, :], Lq, Lk, window, sinks, CAUSAL,
                                          HAS_WINDOW, HAS_SINKS), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, Slopes, SinkLogits, sm_scale,
                stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                Hq, group, Lq, Lk, window, sinks, softcap,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
                HAS_SINK_LOGIT: tl.constexpr, UPCAST: tl.constexpr):
    """One program: BLOCK_M query rows of one (batch, query head); grid (cdiv(Lq, BLOCK_M), B*Hq)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = pid_bh % Hq
    hk = (h // group).to(tl.int64)
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = Q + b * stride_qb + h.to(tl.int64) * stride_qh + rows[:, None] * stride_qm + offs_d[None, :]
    k_ptrs = K + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    q = _load_rows(q_ptrs, rows, Lq, offs_d, HEAD_DIM, BLOCK_D, True)
    if UPCAST:
        q = q.to(tl.float32)
    qk_scale, cap_log2 = _score_scales(sm_scale, softcap, SOFTCAP)
    slope_log2 = 0.0
    if HAS_ALIBI:
        slope_log2 = tl.load(Slopes + h) * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, full_lo, full_hi, hi = _key_band(m0, Lq, Lk, window, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    # [sinks below the band] | band edge (masked) | interior (every row sees every key: no mask)
    # | band edge (masked) | [sinks above the band]
    if HAS_SINKS:
        below, above, end = _sink_tiles(lo, hi, sinks, Lk, BLOCK_N, CAUSAL)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n,
                                   offs_d, 0, below, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2,
                                   HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_ALIBI, SOFTCAP,
                                   HAS_SINKS, UPCAST)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n,
                                   offs_d, above, end, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2,
                                   HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_ALIBI, SOFTCAP,
                                   HAS_SINKS, UPCAST)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n,
                               offs_d, lo, full_lo, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2,
                               HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_ALIBI, SOFTCAP,
                               HAS_SINKS, UPCAST)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n,
                               offs_d, full_lo, full_hi, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2,
                               HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, HAS_WINDOW, HAS_ALIBI, SOFTCAP,
                               HAS_SINKS, UPCAST)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n,
                               offs_d, full_hi, hi, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2,
                               HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_ALIBI, SOFTCAP,
                               HAS_SINKS, UPCAST)
    if HAS_SINK_LOGIT:  # the learned sink: exp(sink_h) joins the denominator (a key whose value is 0)
        sink = tl.load(SinkLogits + h) * 1.4426950408889634
        m_new = tl.maximum(m_i, sink)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.math.exp2(sink - m_new)
        acc = acc * alpha[:, None]
        m_i = m_new
    empty = l_i == 0.0  # rows that see no key: output 0, lse +inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_ptrs = O + b * stride_ob + h.to(tl.int64) * stride_oh + rows[:, None] * stride_om + offs_d[None, :]
    _store_rows(o_ptrs, out.to(O.dtype.element_ty), rows, Lq, offs_d, HEAD_DIM, BLOCK_D)
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + pid_bh.to(tl.int64) * Lq + rows, lse, mask=rows < Lq)


# ---------------------------------------------------------------- backward
@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qm, stride_dm, cols,
                offs_m, offs_d, lo, hi, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_ALIBI: tl.constexpr,
                SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr, UPCAST: tl.constexpr):
    """dV += Pᵀ·dO and dK += dSᵀ·Q over query tiles [lo, hi) of one query head (transposed tiles)."""
    for m0 in range(lo, hi, BLOCK_M):
        rows = m0 + offs_m
        q = _load_rows(q_ptrs + m0 * stride_qm, rows, Lq, offs_d, HEAD_DIM, BLOCK_D, True)
        do = _load_rows(do_ptrs + m0 * stride_dm, rows, Lq, offs_d, HEAD_DIM, BLOCK_D, True)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(lse_ptr + rows, mask=rows < Lq, other=0.0)
        delta = tl.load(delta_ptr + rows, mask=rows < Lq, other=0.0)
        s_t = tl.dot(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M): scores transposed
        if SOFTCAP:
            s_t = _tanh(s_t) * cap_log2
        if HAS_ALIBI:
            s_t += _alibi(rows[None, :], cols[:, None], Lq, Lk, slope_log2)
        ok = _visible_or_sink(rows[None, :], cols[:, None], Lq, Lk, window, sinks, CAUSAL, HAS_WINDOW, HAS_SINKS)
        s_t = tl.where(ok & (rows[None, :] < Lq), s_t, float("-inf"))
        p_t = tl.math.exp2(s_t - lse[None, :])
        dv += tl.dot(p_t.to(do.dtype), do)
        if SOFTCAP:  # d(cap·tanh(x/cap))/dx = 1 - tanh², folded into P; tanh = (log2 P + lse)/cap_log2
            # is read back from P (no tanh tile kept alive: sm_90 32×128 spilled 16 B); P = 0: factor 0
            seen = p_t > 0.0
            t_t = tl.where(seen, (tl.math.log2(tl.where(seen, p_t, 1.0)) + lse[None, :]) / cap_log2, 1.0)
            p_t = p_t * (1.0 - t_t * t_t)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q)
    return dk, dv


@triton.jit
def _dkdv_kernel(Q, K, V, DO, LSE, Delta, DK, DV, Slopes, SinkLogits, sm_scale,
                 stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                 stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dm,
                 Hq, group, Lq, Lk, window, sinks, softcap,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
                 HAS_SINK_LOGIT: tl.constexpr, UPCAST: tl.constexpr):
    """One program: BLOCK_N keys of one (batch, KV head), summing over the group's query heads.

    Grid (cdiv(Lk, BLOCK_N), B*Hkv). dK, dV are (B, Hkv, Lk, D) contiguous, like k."""
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
    qk_scale, cap_log2 = _score_scales(sm_scale, softcap, SOFTCAP)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo, hi = _query_band(n0, Lq, Lk, window, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    if HAS_SINKS:  # a tile holding sink keys is read by every query (causal: from i' >= n0 on)
        if not CAUSAL:
            lo = tl.where(n0 < sinks, 0, lo)
        hi = tl.where(n0 < sinks, Lq, hi)
    for g in range(group):  # the group's query heads all read this KV head
        h = hk * group + g
        slope_log2 = 0.0
        if HAS_ALIBI:
            slope_log2 = tl.load(Slopes + h) * 1.4426950408889634
        q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
        do_ptrs = DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :]
        row_base = (b * Hq + h) * Lq  # into LSE and Delta, (B, Hq, Lq) contiguous
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptrs, do_ptrs, LSE + row_base, Delta + row_base,
                             stride_qm, stride_dm, cols, offs_m, offs_d, lo, hi, Lq, Lk, window, sinks,
                             qk_scale, cap_log2, slope_log2, HEAD_DIM, BLOCK_D, BLOCK_M, CAUSAL, HAS_WINDOW,
                             HAS_ALIBI, SOFTCAP, HAS_SINKS, UPCAST)
    out = (b * Hkv + hk) * Lk * HEAD_DIM + cols[:, None] * HEAD_DIM + offs_d[None, :]
    _store_rows(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), cols, Lk, offs_d, HEAD_DIM, BLOCK_D)
    _store_rows(DV + out, dv.to(DV.dtype.element_ty), cols, Lk, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d,
              lo, hi, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
              HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
              UPCAST: tl.constexpr):
    """dQ += dS·K over key tiles [lo, hi), with dS = P∘(dP - delta) and P recomputed from lse."""
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        k = _load_rows(k_ptrs + start * stride_kn, cols, Lk, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        v = _load_rows(v_ptrs + start * stride_vn, cols, Lk, offs_d, HEAD_DIM, BLOCK_D, MASKED)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        if SOFTCAP:
            t = _tanh(s)
            s = t * cap_log2
        if HAS_ALIBI:
            s += _alibi(rows[:, None], cols[None, :], Lq, Lk, slope_log2)
        if MASKED:
            s = tl.where(_visible_or_sink(rows[:, None], cols[None, :], Lq, Lk, window, sinks, CAUSAL,
                                          HAS_WINDOW, HAS_SINKS), s, float("-inf"))
        p = tl.math.exp2(s - lse[:, None])
        if SOFTCAP:  # d(cap·tanh(x/cap))/dx = 1 - tanh², folded into P (only dS reads it here)
            p = p * (1.0 - t * t)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def _dq_kernel(Q, K, V, DO, LSE, Delta, DQ, Slopes, SinkLogits, sm_scale,
               stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
               stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dm,
               Hq, group, Lq, Lk, window, sinks, softcap,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               HAS_ALIBI: tl.constexpr, SOFTCAP: tl.constexpr, HAS_SINKS: tl.constexpr,
               HAS_SINK_LOGIT: tl.constexpr, UPCAST: tl.constexpr):
    """One program: dQ for BLOCK_M rows of one (batch, query head); DQ is (B, Hq, Lq, D) contiguous."""
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
    qk_scale, cap_log2 = _score_scales(sm_scale, softcap, SOFTCAP)
    slope_log2 = 0.0
    if HAS_ALIBI:
        slope_log2 = tl.load(Slopes + h) * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, full_lo, full_hi, hi = _key_band(m0, Lq, Lk, window, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    if HAS_SINKS:
        below, above, end = _sink_tiles(lo, hi, sinks, Lk, BLOCK_N, CAUSAL)
        dq = _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d,
                       0, below, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2, HEAD_DIM, BLOCK_D,
                       BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_ALIBI, SOFTCAP, HAS_SINKS, UPCAST)
        dq = _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d,
                       above, end, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2, HEAD_DIM, BLOCK_D,
                       BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_ALIBI, SOFTCAP, HAS_SINKS, UPCAST)
    dq = _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d,
                   lo, full_lo, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2, HEAD_DIM, BLOCK_D,
                   BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_ALIBI, SOFTCAP, HAS_SINKS, UPCAST)
    dq = _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d,
                   full_lo, full_hi, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2, HEAD_DIM, BLOCK_D,
                   BLOCK_N, False, CAUSAL, HAS_WINDOW, HAS_ALIBI, SOFTCAP, HAS_SINKS, UPCAST)
    dq = _dq_tiles(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, rows, offs_n, offs_d,
                   full_hi, hi, Lq, Lk, window, sinks, qk_scale, cap_log2, slope_log2, HEAD_DIM, BLOCK_D,
                   BLOCK_N, True, CAUSAL, HAS_WINDOW, HAS_ALIBI, SOFTCAP, HAS_SINKS, UPCAST)
    out = pid_bh.to(tl.int64) * Lq * HEAD_DIM + rows[:, None] * HEAD_DIM + offs_d[None, :]
    _store_rows(DQ + out, (dq * sm_scale).to(DQ.dtype.element_ty), rows, Lq, offs_d, HEAD_DIM, BLOCK_D)


# ---------------------------------------------------------------- launchers
_FWD = autotune_by_arch(_fwd_kernel, FWD_CONFIGS, FWD_CONFIGS_WIDE, TUNE_KEY, INTERPRET_FWD)
_FWD_MODS = autotune_by_arch(_fwd_kernel, FWD_CONFIGS, FWD_CONFIGS_WIDE_MODS, TUNE_KEY, INTERPRET_FWD)  # softcap/sinks
_DKDV = autotune_by_arch(_dkdv_kernel, DKDV_CONFIGS, DKDV_CONFIGS_WIDE, TUNE_KEY, INTERPRET_DKDV)
_DQ = autotune_by_arch(_dq_kernel, DQ_CONFIGS, DQ_CONFIGS_WIDE, TUNE_KEY, INTERPRET_DQ)


@dataclass(frozen=True)
class _Spec:
    """Everything but the tensors q, k, v: the mask, the bias and the scale."""
    causal: bool
    scale: float
    window: int | None
    slopes: torch.Tensor | None  # (Hq,) fp32 or None
    softcap: float = 0.0  # 0: off
    sinks: int = 0
    sink_logits: torch.Tensor | None = None  # (Hq,) fp32 or None

    def constexprs(self, q: torch.Tensor) -> dict:
        d = q.shape[-1]
        return dict(HEAD_DIM=d, BLOCK_D=block_d(d), CAUSAL=self.causal,
                    HAS_WINDOW=self.window is not None, HAS_ALIBI=self.slopes is not None,
                    SOFTCAP=self.softcap > 0, HAS_SINKS=self.sinks > 0,
                    HAS_SINK_LOGIT=self.sink_logits is not None, UPCAST=upcast_for(q.dtype))

    def runtime(self, q: torch.Tensor, k: torch.Tensor) -> tuple:
        """Hq, group, Lq, Lk, window, sinks, softcap: the trailing scalar arguments of every kernel."""
        return (q.shape[1], q.shape[1] // k.shape[1], q.shape[2], k.shape[2], self.window or 0, self.sinks,
                self.softcap)

    def modified(self) -> bool:
        """softcap, sinks or sink logits on: the path with its own tuning lists (configs.py)."""
        return self.softcap > 0 or self.sinks > 0 or self.sink_logits is not None

    def pointers(self) -> tuple:
        return self.slopes, self.sink_logits, self.scale


def _strides(*tensors: torch.Tensor) -> tuple:
    return tuple(s for t in tensors for s in t.stride()[:3])


def _forward(q, k, v, spec: _Spec):
    b, hq, lq, d = q.shape
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((b, hq, lq), device=q.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * hq)  # noqa: E731
    tuner = pick_tuner(_FWD_MODS if spec.modified() else _FWD, q)
    tuner[grid](q, k, v, o, lse, *spec.pointers(), *_strides(q, k, v, o), *spec.runtime(q, k), **spec.constexprs(q))
    return o, lse


def _backward(do, q, k, v, o, lse, spec: _Spec):
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    do = do.contiguous()
    delta = bwd_preprocess(o, do)
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=q.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=q.device, dtype=v.dtype)
    common = spec.runtime(q, k)
    grid_kv = lambda meta: (triton.cdiv(lk, meta["BLOCK_N"]), b * hkv)  # noqa: E731
    pick_tuner(_DKDV, q)[grid_kv](q, k, v, do, lse, delta, dk, dv, *spec.pointers(),
                               *_strides(q, k, v, do), *common, **spec.constexprs(q))
    grid_q = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * hq)  # noqa: E731
    pick_tuner(_DQ, q)[grid_q](q, k, v, do, lse, delta, dq, *spec.pointers(),
                            *_strides(q, k, v, do), *common, **spec.constexprs(q))
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, spec: _Spec):
        o, lse = _forward(q, k, v, spec)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.spec = spec
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, o, lse, ctx.spec)
        return dq, dk, dv, None


def _per_head(q, name: str, x: torch.Tensor | None) -> torch.Tensor | None:
    """A (Hq,) float tensor on q's device as fp32, or None."""
    if x is None:
        return None
    if x.shape != (q.shape[1],):
        raise ValueError(f"flash_attention: {name} must have shape (Hq,) = ({q.shape[1]},), got {tuple(x.shape)}")
    if x.device != q.device or not x.is_floating_point():
        raise ValueError(f"flash_attention: {name} must be a float tensor on q's device")
    return x.detach().to(torch.float32).contiguous()


def _make_spec(q, causal, softmax_scale, window, alibi_slopes, softcap=0.0, sinks=0, sink_logits=None) -> _Spec:
    if window is not None and (isinstance(window, bool) or int(window) != window or window < 1):
        raise ValueError(f"flash_attention: window must be a positive int or None, got {window!r}")
    if softcap and alibi_slopes is not None:  # the backward reads tanh back from P, which ALiBi would shift
        raise ValueError("flash_attention: softcap with alibi_slopes is not supported")
    if isinstance(sinks, bool) or int(sinks) != sinks or sinks < 0:
        raise ValueError(f"flash_attention: sinks must be an int >= 0, got {sinks!r}")
    if not float(softcap) >= 0.0 or softcap == float("inf"):
        raise ValueError(f"flash_attention: softcap must be a finite float >= 0 (0: off), got {softcap!r}")
    window = None if window is None else int(window)
    return _Spec(bool(causal), default_scale(q.shape[-1], softmax_scale), window,
                 _per_head(q, "alibi_slopes", alibi_slopes), float(softcap), int(sinks),
                 _per_head(q, "sink_logits", sink_logits))


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    softmax_scale: float | None = None, window: int | None = None,
                    alibi_slopes: torch.Tensor | None = None, softcap: float = 0.0, sinks: int = 0,
                    sink_logits: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q·kᵀ·scale + alibi, masked)·v for q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) -> (B, Hq, Lq, D).

    softcap > 0: scores cap·tanh(s/cap) before the mask; sinks: the first `sinks` keys are
    visible besides the window; sink_logits (Hq,): exp(sink_h) joins each row's denominator.
    Differentiable in q, k, v. Conventions (bottom-right causal, window, ALiBi, sinks): module docstring."""
    check_qkv("flash_attention", q, k, v)
    spec = _make_spec(q, causal, softmax_scale, window, alibi_slopes, softcap, sinks, sink_logits)
    return _FlashAttention.apply(q, k, v, spec)


# ---------------------------------------------------------------- ahead-of-time compile specs
_TYPES = {name: "*T" for name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
_TYPES.update(LSE="*fp32", Delta="*fp32", Slopes="*fp32", SinkLogits="*fp32", sm_scale="fp32", softcap="fp32")
# Two worst cases (most registers), since softcap excludes ALiBi: the ALiBi path, and the
# softcap + sinks + sink logit path (Gemma-2, StreamingLLM, gpt-oss), each with causal + window.
_ALL_ON = dict(CAUSAL=True, HAS_WINDOW=True, HAS_ALIBI=True, SOFTCAP=False, HAS_SINKS=False,
               HAS_SINK_LOGIT=False, UPCAST=False)
_MODS_ON = _ALL_ON | dict(HAS_ALIBI=False, SOFTCAP=True, HAS_SINKS=True, HAS_SINK_LOGIT=True)
_LISTS = (("fwd", _fwd_kernel, FWD_CONFIGS, FWD_CONFIGS_WIDE),
          ("bwd_dkdv", _dkdv_kernel, DKDV_CONFIGS, DKDV_CONFIGS_WIDE),
          ("bwd_dq", _dq_kernel, DQ_CONFIGS, DQ_CONFIGS_WIDE))
_MODS_LISTS = (("fwd", _fwd_kernel, FWD_CONFIGS, FWD_CONFIGS_WIDE_MODS),) + _LISTS[1:]
AOT_KERNELS = tuple(
    kernel
    for suffix, flags, lists in (("", _ALL_ON, _LISTS), (".softcap_sinks", _MODS_ON, _MODS_LISTS))
    for name, fn, narrow, wide in lists
    for kernel in (AotKernel(f"flash.{name}{suffix}", fn, narrow, _TYPES, flags),
                   AotKernel(f"flash.{name}{suffix}", fn, wide, _TYPES, flags, head_dims=(256,)))
)
