"""Pieces shared by the Triton attention kernels: input checks, the mask and band arithmetic,
tile loads, the backward preprocess kernel and the per-architecture autotuner cache.

Shape legend: q (B, Hq, Lq, D); k, v (B, Hkv, Lk, D); lse, delta (B, Hq, Lq).
Positions: query i, key j, and i' = i + (Lk - Lq) the query's position on the key axis, so the
last query lines up with the last key (bottom-right alignment, as in FlashAttention 2.1+).

Visibility of key j to query i (`_visible`):
  causal                 j <= i'
  causal + window w      i' - w < j <= i'           (w keys, the query's own position included)
  window w, not causal   |i' - j| < w               (w - 1 keys on either side plus i' itself)
ALiBi adds -slope_h * |i' - j| to the scaled score (`_alibi`).
Attention sinks (`_visible_or_sink`): keys j < sinks are visible to every query besides the
above (StreamingLLM), still only j <= i' when causal; `_sink_tiles` gives the key tiles holding
them outside a row block's band. Soft-capping (Gemma-2): the scaled score s becomes
cap·tanh(s / cap) before the mask (`_tanh`: Triton has no tanh, it is computed from exp2).

The log-sum-exp saved by the kernels is in base 2 (log2 of the softmax normaliser plus the
row max, both in units of score·log2(e)); rows that see no key get +inf so exp2(s - lse) = 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # 1 / ln(2): exp(x) = exp2(x * LOG2E)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
ARCHS = ("sm_80", "sm_90")


# ---------------------------------------------------------------- host-side helpers
def interpreting() -> bool:
    """True when Triton runs kernels with its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def upcast_for(dtype: torch.dtype) -> bool:
    """The interpreter computes bf16 tl.dot wrongly: the kernels then cast tiles to fp32 first."""
    return interpreting() and dtype == torch.bfloat16


def arch_of(device: torch.device) -> str:
    """'sm_90' on Hopper and newer, else 'sm_80' (Ampere and Ada share the sm_80 configs)."""
    if interpreting() or device.type != "cuda":
        return "sm_80"
    major, _ = torch.cuda.get_device_capability(device)
    return "sm_90" if major >= 9 else "sm_80"


def block_d(head_dim: int) -> int:
    """Head dim padded to a power of two, at least 16 (the smallest tl.dot operand)."""
    return max(16, triton.next_power_of_2(head_dim))


def check_device(name: str, *tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{name}: all tensors must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if interpreting() and device.type != "cpu":
        raise ValueError(f"{name}: TRITON_INTERPRET=1 runs on CPU tensors, got {device}")
    if not interpreting() and device.type != "cuda":
        raise ValueError(f"{name}: needs CUDA tensors (or TRITON_INTERPRET=1 with CPU tensors), "
                         f"got {device}")


def check_qkv(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Shapes (B, Hq, Lq, D) / (B, Hkv, Lk, D), Hkv | Hq, one dtype, last dim contiguous."""
    for label, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name}: {label} must be 4-D (B, H, L, D), got shape {tuple(t.shape)}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: {label} needs a contiguous last dimension (call .contiguous())")
    if k.shape != v.shape:
        raise ValueError(f"{name}: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    (b, hq, lq, d), (bk, hkv, lk, dk) = q.shape, k.shape
    if b != bk or d != dk:
        raise ValueError(f"{name}: q {tuple(q.shape)} and k {tuple(k.shape)} must agree on B and D")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"{name}: kv heads ({hkv}) must divide query heads ({hq})")
    if min(b, hq, lq, lk, d) == 0:
        raise ValueError(f"{name}: empty dimension in q {tuple(q.shape)} or k {tuple(k.shape)}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"{name}: head dim {d} > {MAX_HEAD_DIM} is not supported")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"{name}: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in DTYPES:
        raise ValueError(f"{name}: dtype {q.dtype} not supported; use float16, bfloat16 or float32")
    check_device(name, q, k, v)


def default_scale(head_dim: int, softmax_scale: float | None) -> float:
    return head_dim ** -0.5 if softmax_scale is None else float(softmax_scale)


def autotune_by_arch(fn, narrow: dict, wide: dict, key: list, interpret: triton.Config) -> dict:
    """{(arch, wide): autotuner} for one kernel, built at import; `wide` means head dim > 128.

    `narrow` and `wide` map arch -> list of triton.Config (configs.py). Under the interpreter
    every entry gets the single config `interpret`: autotuning over several fails there."""
    tuners = {}
    for is_wide, table in ((False, narrow), (True, wide)):
        for arch, configs in table.items():
            configs = [interpret] if interpreting() else configs
            tuners[arch, is_wide] = triton.autotune(configs=list(configs), key=key)(fn)
    return tuners


def pick_tuner(tuners: dict, q: torch.Tensor):
    """The autotuner for q's device and head dim."""
    return tuners[arch_of(q.device), block_d(q.shape[-1]) > 128]


@dataclass(frozen=True)
class AotKernel:
    """What aot.py needs to compile one kernel with no GPU: its autotune lists and its types.

    `types` names the runtime arguments that are not i32 ("*T" is a pointer to the input dtype);
    `constexprs` fixes the feature flags (compiled with the most features on: the worst case
    for registers); `tile` adds the per-kernel tile sizes that are not in the configs."""
    name: str
    fn: object  # the @triton.jit function
    configs: dict  # arch -> list[triton.Config]
    types: dict
    constexprs: dict = field(default_factory=dict)
    head_dims: tuple = (64, 128)

    def signature(self, dtype: str) -> dict:
        """{arg: type} for ASTSource, dtype in Triton's spelling ('fp16', 'bf16', 'fp32')."""
        sig = {}
        for param in self.fn.params:
            kind = "constexpr" if param.is_constexpr else self.types.get(param.name, "i32")
            sig[param.name] = kind.replace("T", dtype) if kind.startswith("*") else kind
        return sig


# ---------------------------------------------------------------- device-side helpers
@triton.jit
def _visible(i, j, Lq, Lk, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Bool tile (broadcast of i and j): may query i see key j? Key tails (j >= Lk) are hidden."""
    ip = i + (Lk - Lq)
    ok = j < Lk
    if CAUSAL:
        ok = ok & (j <= ip)
    if HAS_WINDOW:
        ok = ok & (j > ip - window)
        if not CAUSAL:
            ok = ok & (j < ip + window)
    return ok


@triton.jit
def _alibi(i, j, Lq, Lk, slope_log2):
    """ALiBi bias -slope·|i' - j|, already multiplied by log2(e) (slope_log2 = slope·LOG2E)."""
    dist = (i + (Lk - Lq)) - j
    return -slope_log2 * tl.abs(dist).to(tl.float32)


@triton.jit
def _key_band(m0, Lq, Lk, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key range of query rows [m0, m0+BLOCK_M) as lo <= full_lo <= full_hi <= hi.

    Tiles outside [lo, hi) are skipped; tiles in [full_lo, full_hi) are visible to every row of
    the block (no mask needed); the rest of [lo, hi) is loaded with masks."""
    offset = Lk - Lq
    lo = 0
    hi = Lk
    full_lo = 0
    full_hi = (Lk // BLOCK_N) * BLOCK_N  # tiles with no key tail
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M + offset)  # last row sees up to j = m0+BM-1+offset
        full_hi = tl.minimum(full_hi, (tl.maximum(m0 + offset + 1, 0) // BLOCK_N) * BLOCK_N)
    if HAS_WINDOW:
        lo = tl.maximum(m0 + offset - window + 1, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
        first_full = tl.maximum(m0 + BLOCK_M + offset - window, 0)
        full_lo = tl.maximum((first_full + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo)
        if not CAUSAL:
            hi = tl.minimum(hi, m0 + BLOCK_M - 1 + offset + window)
            full_hi = tl.minimum(full_hi, (tl.maximum(m0 + offset + window, 0) // BLOCK_N) * BLOCK_N)
    hi = tl.maximum(hi, lo)  # an empty band: every loop below runs zero times
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.maximum(tl.minimum(full_hi, hi), full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def _query_band(n0, Lq, Lk, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Query range [lo, hi) that can see some key of [n0, n0+BLOCK_N); lo is BLOCK_M-aligned."""
    offset = Lk - Lq
    lo = 0
    hi = Lq
    if CAUSAL:
        lo = tl.maximum(n0 - offset, 0)  # the first query with i' >= n0
    if HAS_WINDOW:
        hi = tl.minimum(hi, n0 + BLOCK_N - 1 + window - offset)
        if not CAUSAL:
            lo = tl.maximum(n0 - window + 1 - offset, 0)
    lo = (lo // BLOCK_M) * BLOCK_M
    return lo, hi


@triton.jit
def _tanh(x):
    """tanh(x) = sign(x)·(1 - e^(-2|x|)) / (1 + e^(-2|x|)): no overflow, exact at ±inf."""
    e = tl.math.exp2(-2.8853900817779268 * tl.abs(x))  # e^(-2|x|); 2.885... = 2·log2(e)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _score_scales(sm_scale, softcap, SOFTCAP: tl.constexpr):
    """(qk_scale, cap_log2): the kernels compute s = q·k·qk_scale in log2 units; with SOFTCAP,
    q·k·sm_scale/cap, then s = tanh(s)·cap_log2 (cap·tanh(x/cap) in log2 units)."""
    if SOFTCAP:
        return sm_scale / softcap, softcap * 1.4426950408889634
    return sm_scale * 1.4426950408889634, 1.0


@triton.jit
def _visible_or_sink(i, j, Lq, Lk, window, sinks, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                     HAS_SINKS: tl.constexpr):
    """`_visible`, or j one of the first `sinks` keys (and j <= i' when causal)."""
    ok = _visible(i, j, Lq, Lk, window, CAUSAL, HAS_WINDOW)
    if HAS_SINKS:
        sink = (j < sinks) & (j < Lk)
        if CAUSAL:
            sink = sink & (j <= i + (Lk - Lq))
        ok = ok | sink
    return ok


@triton.jit
def _sink_tiles(lo, hi, sinks, Lk, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Key tiles [0, below) and [above, end) that hold sink keys (j < sinks) outside the band's
    tiles [lo, lo + ceil((hi - lo) / BLOCK_N)·BLOCK_N) (lo is BLOCK_N-aligned); empty ranges
    have end <= start. Causal: keys past the band's hi are seen by no row of the block."""
    end = (tl.minimum(sinks, Lk) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    below = tl.minimum(end, lo)
    above = lo + (hi - lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    if CAUSAL:
        end = tl.minimum(end, above)
    return below, above, tl.maximum(end, above)


@triton.jit
def _load_rows(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               CHECK_ROWS: tl.constexpr):
    """Load a (rows, BLOCK_D) tile, zero-filling rows >= n_rows (if CHECK_ROWS) and d >= HEAD_DIM."""
    if CHECK_ROWS:
        if BLOCK_D == HEAD_DIM:
            tile = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return tile


@triton.jit
def _store_rows(ptrs, tile, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    if BLOCK_D == HEAD_DIM:
        tl.store(ptrs, tile, mask=rows[:, None] < n_rows)
    else:
        tl.store(ptrs, tile, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _bwd_preprocess_kernel(O, DO, Delta, stride_ob, stride_oh, stride_om, stride_db, stride_dh,
                           stride_dm, Hq, Lq, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                           BLOCK_M: tl.constexpr):
    """delta[b, h, i] = sum_d dO·O (fp32): the row term of dS = P ∘ (dP - delta)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o_ptrs = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh \
        + rows[:, None] * stride_om + offs_d[None, :]
    do_ptrs = DO + b.to(tl.int64) * stride_db + h.to(tl.int64) * stride_dh \
        + rows[:, None] * stride_dm + offs_d[None, :]
    o = _load_rows(o_ptrs, rows, Lq, offs_d, HEAD_DIM, BLOCK_D, True).to(tl.float32)
    do = _load_rows(do_ptrs, rows, Lq, offs_d, HEAD_DIM, BLOCK_D, True).to(tl.float32)
    delta = tl.sum(o * do, axis=1)
    tl.store(Delta + pid_bh.to(tl.int64) * Lq + rows, delta, mask=rows < Lq)


PREPROCESS_BLOCK_M = 64


def bwd_preprocess(o: torch.Tensor, do: torch.Tensor) -> torch.Tensor:
    """delta (B, Hq, Lq) fp32 = rowsum(dO ∘ O), computed by `_bwd_preprocess_kernel`."""
    b, hq, lq, d = o.shape
    delta = torch.empty((b, hq, lq), device=o.device, dtype=torch.float32)
    grid = (triton.cdiv(lq, PREPROCESS_BLOCK_M), b * hq)
    _bwd_preprocess_kernel[grid](o, do, delta, *o.stride()[:3], *do.stride()[:3], hq, lq,
                                 HEAD_DIM=d, BLOCK_D=block_d(d), BLOCK_M=PREPROCESS_BLOCK_M)
    return delta


@triton.jit
def _online_softmax_step(s, m_i, l_i, acc, v):
    """One online-softmax update over a key tile: s (M, N) are base-2 scores, -inf where masked;
    the running max m_i and sum l_i and the accumulator acc (M, D) take the tile's probabilities
    times its values v (N, D). Returns (m_i, l_i, acc). Rows with no visible key so far keep
    m_i = -inf, l_i = 0 and acc = 0 (no NaN)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc
