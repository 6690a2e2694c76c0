"""Axial and Swin attention against explicit loops over rows, columns and windows."""

import math
from dataclasses import replace

import pytest
import torch

import attnbench.variants.vision as vision
from attnbench.core.problem import Problem
from attnbench.variants import registry

CPU = torch.device("cpu")


def _problem(name, length=64, hq=2, hkv=2, d=8, causal=False, **params):
    var = registry.get(name)
    p = Problem(batch=2, heads=hq, kv_heads=hkv, seq_q=length, seq_k=length, head_dim=d, causal=causal)
    return var, var.resolve(p.with_params(**{**var.defaults, **params}))


def _inputs(p, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(p.batch, p.heads, p.seq_q, p.head_dim, generator=g)
    k = torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g)
    v = torch.randn(p.batch, p.kv_heads, p.seq_k, p.head_dim, generator=g)
    g = p.heads // p.kv_heads
    return q, k, v, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)


def _attend(q, k, v, causal=False):
    """softmax over a handful of (query, key) rows, written out: q (n, D), k/v (m, D)."""
    s = q @ k.T / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def _axial_loops(q, k, v, hg, wg, causal):
    b, h, _, d = q.shape
    mid = torch.zeros_like(q)
    out = torch.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            for r in range(hg):  # along row r: tokens r·W .. r·W + W − 1
                idx = torch.arange(r * wg, (r + 1) * wg)
                mid[bi, hi, idx] = _attend(q[bi, hi, idx], k[bi, hi, idx], v[bi, hi, idx], causal)
            for c in range(wg):  # along column c: tokens c, c + W, ...
                idx = torch.arange(c, hg * wg, wg)
                out[bi, hi, idx] = _attend(q[bi, hi, idx], k[bi, hi, idx], mid[bi, hi, idx], causal)
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("grid,heads", [(None, (2, 2)), ("4x16", (2, 2)), ("8x8", (4, 2))])
def test_axial_against_row_and_column_loops(causal, grid, heads):
    var, p = _problem("axial", causal=causal, hq=heads[0], hkv=heads[1], grid=grid)
    assert var.why_unsupported(p) is None and p.param("grid") == (grid or "8x8")
    q, k, v, kr, vr = _inputs(p)
    hg, wg = vision.grid_of(p)
    expected = _axial_loops(q, kr, vr, hg, wg, causal)
    torch.testing.assert_close(var.reference(q, k, v, p), expected, atol=1e-5, rtol=1e-4)
    for b in var.backends:
        torch.testing.assert_close(b.build(p, CPU)(q, k, v), expected, atol=1e-5, rtol=1e-4, msg=b.name)


def _swin_loops(q, k, v, hg, wg, w, s):
    """Per-window attention in original coordinates: the windows of the grid shifted by s,
    partial windows at the borders kept separate (no wrap-around mixing)."""
    out = torch.zeros_like(q)
    row_cuts = sorted({0, hg} | set(range(s, hg, w)))
    col_cuts = sorted({0, wg} | set(range(s, wg, w)))
    for r0, r1 in zip(row_cuts, row_cuts[1:]):
        for c0, c1 in zip(col_cuts, col_cuts[1:]):
            idx = torch.tensor([r * wg + c for r in range(r0, r1) for c in range(c0, c1)])
            for bi in range(q.shape[0]):
                for hi in range(q.shape[1]):
                    out[bi, hi, idx] = _attend(q[bi, hi, idx], k[bi, hi, idx], v[bi, hi, idx])
    return out


@pytest.mark.parametrize("length,grid,window,shift,heads", [
    (64, None, 4, None, (2, 2)),  # shift = 2
    (64, None, 4, 0, (2, 2)),  # plain windows
    (128, "8x16", 4, 1, (4, 2)),  # rectangular, GQA
    (256, None, 8, None, (2, 2)),  # the defaults: window 8, shift 4
])
def test_swin_against_window_loops(length, grid, window, shift, heads):
    var, p = _problem("swin", length=length, hq=heads[0], hkv=heads[1], grid=grid, window=window, shift=shift)
    assert var.why_unsupported(p) is None
    q, k, v, kr, vr = _inputs(p)
    hg, wg = vision.grid_of(p)
    s = window // 2 if shift is None else shift
    assert p.param("shift") == s
    expected = _swin_loops(q, kr, vr, hg, wg, window, s)
    torch.testing.assert_close(var.reference(q, k, v, p), expected, atol=1e-5, rtol=1e-4)
    for b in var.backends:
        torch.testing.assert_close(b.build(p, CPU)(q, k, v), expected, atol=1e-5, rtol=1e-4, msg=b.name)


def test_swin_picture_is_the_token_mask():
    var, p = _problem("swin", length=256, window=8)
    pic = var.picture(p)
    assert pic.shape == (256, 256) and torch.equal(pic, pic.T) and bool(pic.diagonal().all())
    assert torch.equal(pic.bool(), vision.swin_mask(p))
    # interior window of a 16x16 grid shifted by 4: rows 4..11 × cols 4..11, 64 tokens
    assert pic[5 * 16 + 5].sum() == 64 and pic[0].sum() == 16  # corner cell 4x4
    big = var.picture(_problem("swin", length=64 * 64, window=8)[1])
    assert big.shape == (256, 256)  # large grids are drawn at 2·window per side


def test_unsupported_with_reasons():
    axial, p = _problem("axial", length=60)
    assert "not a grid" in axial.why_unsupported(p)
    assert "not a grid" in axial.why_unsupported(p.with_params(grid="7x7"))
    assert axial.why_unsupported(p.with_params(grid="6x10")) is None
    assert "Lq == Lk" in axial.why_unsupported(replace(_problem("axial")[1], seq_q=1, mode="decode"))
    swin, p = _problem("swin", causal=True, window=4)
    assert "no causal order" in swin.why_unsupported(p)
    assert "must divide" in swin.why_unsupported(_problem("swin", length=144, window=8)[1])
    assert "shift" in swin.why_unsupported(_problem("swin", window=4, shift=4)[1])


def test_flops():
    var, p = _problem("axial", length=1024, hq=1, hkv=1, d=64)
    assert var.flops(p) == 4 * 2 * 1024 * (32 + 32) * 64
    var, p = _problem("swin", length=1024, hq=1, hkv=1, d=64, window=8, shift=0)
    assert var.flops(p) == 4 * 2 * 1024 * 64 * 64  # unshifted: L·w² pairs
    var, p = _problem("swin", length=1024, hq=1, hkv=1, d=64, window=8)  # shift 4: cells 4, 8, 8, 8, 4 per axis
    assert var.flops(p) == 4 * 2 * 64 * (4 * 4 + 3 * 8 * 8 + 4 * 4) ** 2
    assert registry.get("axial").full_attention_error and registry.get("swin").exact
