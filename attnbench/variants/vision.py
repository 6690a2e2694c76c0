"""Attention on an image grid: axial attention and Swin's shifted windows.

The L = H·W tokens are a raster-ordered grid (`grid` = "HxW"; None means square, √L × √L).

axial (Ho et al. 2019, "Axial Attention in Multidimensional Transformers"): attention along
    rows, then along columns. In our q/k/v terms (no projections between the steps):
        out = A_col (A_row V),   A_row = softmax(QKᵀ/√D) restricted to keys in the query's row,
                                 A_col the same restricted to its column,
    so every token reaches every token in two steps. Causal: raster order within each step (the
    row step sees keys left of it, the column step keys above it); this simple form reaches
    only the rectangle above-left, not the paper's full masked decoder with its shifted row
    context. The reference builds both steps densely with explicit L×L masks; `exact` holds
    w.r.t. this definition, and the error against full attention is reported too.
swin (Liu et al. 2021, "Swin Transformer"): attention inside `window`×`window` windows after a
    cyclic shift of the grid by `shift` (default window//2; 0 = plain windows), with Swin's mask
    so tokens wrapped around the border do not attend across it. In the original coordinates
    this is: tokens attend each other iff they fall in the same cell of a partition of rows (and
    of columns) at boundaries s, s+w, s+2w, ... (edge cells are partial). Swin's relative
    position bias is learned and left out. Not causal (an image has no order).

Backends: `eager` (reshapes, batched matmuls), `sdpa` (the rows / columns / windows batched
into torch SDPA). GQA: K/V heads are repeated. Lq == Lk only (self-attention on one grid).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.shared import (
    attention_flops,
    check_heads,
    fill_defaults,
    io_bytes,
    repeat_kv,
    softmax_attention,
)


# ---------------------------------------------------------------- the grid
def grid_of(problem: Problem) -> tuple[int, int] | None:
    """(H, W) from the `grid` param ("HxW", or None for a square grid), or None if invalid."""
    g = problem.param("grid")
    if g is None:
        s = math.isqrt(problem.seq_k)
        return (s, s) if s * s == problem.seq_k else None
    try:
        h, w = (int(x) for x in str(g).lower().split("x"))
    except ValueError:
        return None
    return (h, w) if h > 0 and w > 0 else None


def _resolve(defaults: dict) -> Callable[[Problem], Problem]:
    def resolve(p: Problem) -> Problem:
        p = fill_defaults(p, **{k: v for k, v in defaults.items() if v is not None})
        hw = grid_of(p)
        if p.param("grid") is None and hw and p.seq_q == p.seq_k:
            p = p.with_params(grid=f"{hw[0]}x{hw[1]}")  # records show the grid used
        if "window" in defaults and p.param("shift") is None:
            p = p.with_params(shift=int(p.param("window")) // 2)
        return p

    return resolve


def _grid_supports(p: Problem) -> Reason:
    if p.mode == "decode" or p.seq_q != p.seq_k:
        return f"needs self-attention on one grid (Lq == Lk); got Lq={p.seq_q}, Lk={p.seq_k}"
    hw = grid_of(p)
    if hw is None or hw[0] * hw[1] != p.seq_k:
        return (
            f"L={p.seq_k} is not a grid: give grid=HxW with H·W = L "
            f"(got grid={p.param('grid')}; None means a square √L × √L)"
        )
    return check_heads(p)


def _small(p: Problem, side: tuple[int, int]) -> Problem:
    """The problem itself if it is a valid grid of at most 1024 tokens, else a side[0]×side[1]
    grid with the same params (for the pattern gallery)."""
    if _grid_supports(p) is None and p.seq_k <= 1024:
        return p
    n = side[0] * side[1]
    return replace(p, seq_q=n, seq_k=n, kv_heads=p.heads, mode="fwd").with_params(grid=f"{side[0]}x{side[1]}")


def _builder(attention: Callable, use_sdpa: bool, setup: Callable | None = None):
    def build(problem: Problem, device: torch.device) -> Fn:
        extra = setup(problem, device) if setup else None  # masks are built here, not timed
        return lambda q, k, v: attention(q, k, v, problem, use_sdpa, extra)

    return build


def _eager(q, k, v, causal: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(QKᵀ/√D)V over the last two axes (any batch axes); mask (..., n, n) True = attend."""
    s = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1).to(v.dtype) @ v


def _sdpa(q, k, v, causal: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    """torch SDPA over the last two axes; leading axes merged to the 4-D layout it expects."""
    flat = lambda x: x.reshape(-1, *x.shape[-3:])  # noqa: E731
    out = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), attn_mask=mask, is_causal=causal)
    return out.reshape(q.shape[:-1] + v.shape[-1:])


# ---------------------------------------------------------------- axial
def axial_masks(hw: tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L) bool masks: same row, same column (raster order)."""
    h, w = hw
    r = torch.arange(h * w, device=device) // w
    c = torch.arange(h * w, device=device) % w
    return r[:, None] == r[None, :], c[:, None] == c[None, :]


def axial_reference(q, k, v, problem: Problem) -> torch.Tensor:
    """Dense formulation: A_row and A_col as L×L masked softmaxes (raster causal if causal)."""
    row, col = axial_masks(grid_of(problem), q.device)
    mid = softmax_attention(q, k, v, mask=row, causal=problem.causal)  # A_row V
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    return softmax_attention(q, k, mid, mask=col, causal=problem.causal)  # A_col (A_row V)


def axial_attention(q, k, v, problem: Problem, use_sdpa: bool, _=None) -> torch.Tensor:
    """Rows as a batch axis, then columns: (B, H, L, D) viewed as (B, H, Hg, Wg, D)."""
    hg, wg = grid_of(problem)
    groups = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    b, h, _, d = q.shape
    grid = lambda x: x.reshape(b, h, hg, wg, d)  # noqa: E731
    cols = lambda x: x.transpose(2, 3)  # noqa: E731  (B, H, Wg, Hg, D): columns as the batch axis
    attend = _sdpa if use_sdpa else _eager
    mid = attend(grid(q), grid(k), grid(v), problem.causal)  # along rows   4·Wg·D per query
    out = attend(cols(grid(q)), cols(grid(k)), cols(mid), problem.causal)  # along columns   4·Hg·D
    return cols(out).reshape(b, h, hg * wg, d)


def axial_workspace(p: Problem, use_sdpa: bool) -> float:
    """The row step's output (mid); eager also copies the column views of q, k and mid contiguous
    and holds 2.5 fp32 score tensors of one step's (B, Hq, L, max(Hg, Wg))."""
    hg, wg = grid_of(p) or (math.isqrt(p.seq_k),) * 2
    q_size = p.batch * p.heads * p.seq_q * p.head_dim * p.itemsize
    if use_sdpa:
        return float(q_size)
    return 3.0 * q_size + 2.5 * 4 * p.batch * p.heads * p.seq_q * max(hg, wg)


def axial_flops(p: Problem) -> float:
    hg, wg = grid_of(p) or (math.isqrt(p.seq_k),) * 2
    if not p.causal:  # each query attends Wg keys, then Hg keys: 4·B·Hq·L·(Hg+Wg)·D
        return attention_flops(p, pairs=p.seq_q * (hg + wg))
    pairs = hg * wg * (wg + 1) // 2 + wg * hg * (hg + 1) // 2  # triangles within rows and columns
    return attention_flops(p, pairs=pairs)


def axial_picture(p: Problem) -> torch.Tensor:
    """One step's keys for each query: 1 = same row, 2 = same column, 3 = itself (both)."""
    row, col = axial_masks(grid_of(_small(p, (8, 8))))
    return row.float() + 2 * col.float()


AXIAL_DEFAULTS = {"grid": None}
AXIAL = Variant(
    name="axial",
    family="vision",
    oracle="reference",
    description="axial attention on an H×W grid: along rows, then along columns (grid=HxW, default square)",
    time="O(L·√L)",
    memory="O(L·√L)",
    reference=axial_reference,
    flops=axial_flops,
    bytes=io_bytes,
    backends=(
        Backend("eager", _builder(axial_attention, False), "rows then columns as batched matmuls",
                workspace=lambda p: axial_workspace(p, False)),
        Backend("sdpa", _builder(axial_attention, True), "rows then columns batched into torch SDPA",
                workspace=lambda p: axial_workspace(p, True)),
    ),
    resolve=_resolve(AXIAL_DEFAULTS),
    why_unsupported=_grid_supports,
    full_attention_error=True,
    defaults=AXIAL_DEFAULTS,
    picture=axial_picture,
)


# ---------------------------------------------------------------- swin
def _window_params(p: Problem) -> tuple[int, int]:
    w = int(p.param("window"))
    s = p.param("shift")
    return w, (w // 2 if s is None else int(s))


def swin_mask(problem: Problem, device=None) -> torch.Tensor:
    """(L, L) bool, in original coordinates: same cell of the partition of rows (and columns)
    at boundaries s, s+w, s+2w, ...: cell(i) = (i − s + w) // w."""
    (hg, wg), (w, s) = grid_of(problem), _window_params(problem)
    idx = torch.arange(hg * wg, device=device)
    cell_r, cell_c = (idx // wg - s + w) // w, (idx % wg - s + w) // w
    return (cell_r[:, None] == cell_r[None, :]) & (cell_c[:, None] == cell_c[None, :])


def swin_pairs(problem: Problem) -> int:
    """(query, key) pairs swin_mask attends: the mask is (same row cell) & (same column cell), so
    its pairs are (Σ row-cell sizes²)·(Σ column-cell sizes²). The shifted windows' wrapped tokens
    are masked, so this is below L·w² when shift > 0 (L·w² counts the windows' full w²×w² blocks)."""
    (hg, wg), (w, s) = grid_of(problem), _window_params(problem)

    def squares(n: int) -> int:
        return int((torch.bincount((torch.arange(n) - s + w) // w) ** 2).sum())

    return squares(hg) * squares(wg)


def swin_reference(q, k, v, problem: Problem) -> torch.Tensor:
    return softmax_attention(q, k, v, mask=swin_mask(problem, q.device))


def to_windows(x: torch.Tensor, hw: tuple[int, int], w: int, s: int) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, nW, w², D): roll the grid by (−s, −s), cut w×w windows."""
    (b, h, _, d), (hg, wg) = x.shape, hw
    x = x.reshape(b, h, hg, wg, d)
    if s:
        x = x.roll((-s, -s), dims=(2, 3))
    x = x.reshape(b, h, hg // w, w, wg // w, w, d).transpose(3, 4)
    return x.reshape(b, h, (hg // w) * (wg // w), w * w, d)


def from_windows(x: torch.Tensor, hw: tuple[int, int], w: int, s: int) -> torch.Tensor:
    """Inverse of to_windows: (B, H, nW, w², D) -> (B, H, L, D)."""
    (b, h, _, _, d), (hg, wg) = x.shape, hw
    x = x.reshape(b, h, hg // w, wg // w, w, w, d).transpose(3, 4).reshape(b, h, hg, wg, d)
    if s:
        x = x.roll((s, s), dims=(2, 3))
    return x.reshape(b, h, hg * wg, d)


def window_mask(problem: Problem, device: torch.device) -> torch.Tensor | None:
    """Swin's mask on the shifted grid: (nW, w², w²) bool, True where two tokens of a window
    come from the same region (not wrapped across the border). None when shift = 0."""
    (hg, wg), (w, s) = grid_of(problem), _window_params(problem)
    if s == 0:
        return None

    def regions(n: int) -> torch.Tensor:  # 0: inside, 1: last window, 2: wrapped from the start
        i = torch.arange(n, device=device)
        return (i >= n - w).long() + (i >= n - s).long()

    label = (3 * regions(hg)[:, None] + regions(wg)[None, :]).reshape(1, 1, hg * wg, 1)
    label = to_windows(label, (hg, wg), w, 0)[0, 0, ..., 0]  # (nW, w²), already shifted
    return label[:, :, None] == label[:, None, :]


def swin_attention(q, k, v, problem: Problem, use_sdpa: bool, mask: torch.Tensor | None) -> torch.Tensor:
    hw, (w, s) = grid_of(problem), _window_params(problem)
    groups = q.shape[1] // k.shape[1]
    qw, kw, vw = (to_windows(x, hw, w, s) for x in (q, repeat_kv(k, groups), repeat_kv(v, groups)))
    out = (_sdpa if use_sdpa else _eager)(qw, kw, vw, False, mask)  # per window: 4·w²·D per query
    return from_windows(out, hw, w, s)


def swin_workspace(p: Problem) -> float:
    """Rolled, windowed copies of q, k and v and the output's way back, and 2.5 fp32 score tensors
    of w² keys per query (SDPA with the shift mask measured the same on the CPU)."""
    w, _ = _window_params(p)
    q_size = p.batch * p.heads * p.seq_q * p.head_dim * p.itemsize
    return 4.0 * q_size + 2.5 * 4 * p.batch * p.heads * p.seq_q * w * w


def _swin_supports(p: Problem) -> Reason:
    if p.causal:
        return "swin attends windows of an image grid, which has no causal order"
    reason = _grid_supports(p)
    if reason:
        return reason
    (hg, wg), (w, s) = grid_of(p), _window_params(p)
    if w < 1 or hg % w or wg % w:
        return f"window={w} must divide both grid sides {hg}x{wg}"
    if not 0 <= s < w:
        return f"shift={s} must be in [0, window={w})"
    return None


def swin_picture(p: Problem) -> torch.Tensor:
    w, _ = _window_params(p)
    return swin_mask(_small(p, (2 * w, 2 * w))).float()


SWIN_DEFAULTS = {"grid": None, "window": 8, "shift": None}
SWIN = Variant(
    name="swin",
    family="vision",
    oracle="reference",
    description="Swin shifted-window attention on an H×W grid (window=8, shift=window//2)",
    time="O(L·w²)",
    memory="O(L·w²)",
    reference=swin_reference,
    flops=lambda p: attention_flops(p, pairs=swin_pairs(p)),  # the attended pairs of the shifted windows
    bytes=io_bytes,
    backends=(
        Backend("eager", _builder(swin_attention, False, window_mask), "roll, cut windows, batched matmuls",
                workspace=swin_workspace),
        Backend("sdpa", _builder(swin_attention, True, window_mask), "roll, cut windows, torch SDPA over all windows",
                workspace=swin_workspace),
    ),
    resolve=_resolve(SWIN_DEFAULTS),
    why_unsupported=_swin_supports,
    full_attention_error=True,
    defaults=SWIN_DEFAULTS,
    picture=swin_picture,
)

VARIANTS = (AXIAL, SWIN)
