"""attnbench.kernels.flash under the Triton interpreter (CPU tensors), against a materialised oracle.

Tolerance (flash-attention's rule): the kernel's error against the fp64 oracle must be at most
K times the error of the same oracle computed in the input's low precision, plus a small atol.
fp32 inputs: an absolute bound scaled by the output's magnitude.

Also defines the oracle and the error check that the block-sparse and decode tests import.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.interpreter
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)", allow_module_level=True)
triton = pytest.importorskip("triton")

from attnbench.kernels import (  # noqa: E402
    _common,  # noqa: E402
    flash_attention,
    triton_unavailable_reason,
)

K_FACTOR = 3.0  # kernel error <= K_FACTOR × the low-precision oracle's error + ATOL
ATOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
FP32_ATOL = 2e-5


# ---------------------------------------------------------------- the oracle
def visible_mask(lq: int, lk: int, *, causal=False, window=None) -> torch.Tensor:
    """(Lq, Lk) bool, written from the documented conventions (bottom-right alignment)."""
    ip = torch.arange(lq)[:, None] + (lk - lq)
    j = torch.arange(lk)[None, :]
    mask = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        mask &= j <= ip
    if window is not None:
        mask &= j > ip - window
        if not causal:
            mask &= j < ip + window
    return mask


def attention_oracle(q, k, v, *, causal=False, window=None, alibi_slopes=None, scale=None,
                     allowed=None, dtype=torch.float64):
    """softmax(q·kᵀ·scale - slope·|i'-j|, masked)·v materialised in `dtype`; empty rows give 0.

    allowed: an extra bool mask broadcastable to (B, Hq, Lq, Lk) (block-sparse layouts)."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    lq, lk, d = q.shape[2], k.shape[2], q.shape[3]
    mask = visible_mask(lq, lk, causal=causal, window=window)
    if allowed is not None:
        mask = mask & allowed
    s = (q @ k.transpose(-2, -1)) * (d ** -0.5 if scale is None else scale)
    if alibi_slopes is not None:
        dist = (torch.arange(lq)[:, None] + (lk - lq) - torch.arange(lk)[None, :]).abs()
        s = s - alibi_slopes.to(dtype)[:, None, None] * dist.to(dtype)
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0) @ v


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_close(name: str, got: torch.Tensor, exact: torch.Tensor, low: torch.Tensor) -> None:
    """got vs exact (fp64 oracle), judged against low (the oracle run in got's dtype)."""
    err = max_err(got, exact)
    if got.dtype == torch.float32:
        bound = FP32_ATOL * max(1.0, exact.abs().max().item())
    else:
        bound = K_FACTOR * max_err(low, exact) + ATOL[got.dtype]
    assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g}"


def make_qkv(b, hq, hkv, lq, lk, d, dtype, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, lk, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, lk, d, generator=g).to(dtype)
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def alibi_slopes(hq: int) -> torch.Tensor:
    """The ALiBi paper's geometric slopes 2^(-8h/H)."""
    return torch.tensor([2 ** (-8 * (h + 1) / hq) for h in range(hq)], dtype=torch.float32)


def check_forward_backward(fn, oracle_kwargs, q, k, v, grads: bool, seed=1):
    """Run fn and the oracle (fp64 and low precision); compare outputs and, if asked, dq dk dv."""
    out = fn(q, k, v)
    exact = attention_oracle(q, k, v, **oracle_kwargs)
    low = attention_oracle(q, k, v, dtype=q.dtype, **oracle_kwargs)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close("out", out, exact, low)
    if not grads:
        return
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(q.dtype)
    got = torch.autograd.grad(out, (q, k, v), do)
    want = torch.autograd.grad(exact, (q, k, v), do.double())
    want_low = torch.autograd.grad(low, (q, k, v), do)
    for name, g, w, wl in zip(("dq", "dk", "dv"), got, want, want_low):
        assert g.shape == w.shape and g.dtype == q.dtype
        assert_close(name, g, w, wl)


# ---------------------------------------------------------------- forward and backward
# (B, Hq, Hkv, Lq, Lk, D, causal, window, alibi)
CASES = {
    "decode-row": (1, 2, 2, 1, 37, 16, False, None, False),
    "mqa-causal-short-q": (1, 2, 1, 37, 100, 40, True, None, False),
    "gqa-causal-long-q": (2, 4, 2, 100, 37, 64, True, None, False),  # rows with no key -> 0
    "mha-odd": (1, 2, 2, 129, 129, 80, False, None, False),
    "d96-lk-longer": (1, 2, 2, 64, 150, 96, False, None, False),
    "window-causal": (1, 2, 1, 200, 200, 32, True, 50, False),
    "window-bidir": (1, 2, 2, 100, 130, 16, False, 20, False),
    "alibi-causal": (1, 4, 4, 129, 129, 64, True, None, True),
    "alibi-window-gqa": (1, 4, 2, 77, 150, 40, False, 17, True),
    "all-causal-window-alibi": (1, 4, 1, 130, 100, 64, True, 33, True),
}
GRAD_CASES = ("mqa-causal-short-q", "gqa-causal-long-q", "mha-odd", "window-causal",
              "alibi-window-gqa", "all-causal-window-alibi")


def _run_case(name, dtype, grads):
    b, hq, hkv, lq, lk, d, causal, window, alibi = CASES[name]
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d, dtype, grad=grads)
    slopes = alibi_slopes(hq) if alibi else None
    kw = dict(causal=causal, window=window, alibi_slopes=slopes)
    check_forward_backward(lambda q, k, v: flash_attention(q, k, v, **kw), kw, q, k, v, grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_forward(name, dtype):
    _run_case(name, dtype, grads=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", GRAD_CASES)
def test_backward(name, dtype):
    _run_case(name, dtype, grads=True)


def test_bfloat16_runs_through_the_upcast_path():
    """bf16 tl.dot is wrong under the interpreter: the kernels upcast tiles (UPCAST constexpr)."""
    q, k, v = make_qkv(1, 2, 1, 70, 90, 64, torch.bfloat16, grad=True)
    kw = dict(causal=True, window=40)
    check_forward_backward(lambda q, k, v: flash_attention(q, k, v, **kw), kw, q, k, v, grads=True)


def test_softmax_scale_and_strided_inputs():
    """(B, L, H, D) tensors viewed as (B, H, L, D): any strides but a contiguous last dim."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 50, 2, 32, generator=g).transpose(1, 2)
    k = torch.randn(2, 60, 1, 32, generator=g).transpose(1, 2)
    v = torch.randn(2, 60, 1, 32, generator=g).transpose(1, 2)
    out = flash_attention(q, k, v, causal=True, softmax_scale=0.3)
    exact = attention_oracle(q, k, v, causal=True, scale=0.3)
    assert max_err(out, exact) < 1e-5


def test_empty_rows_output_zero_and_zero_grads():
    """Causal with Lq > Lk: the first Lq - Lk queries see no key."""
    q, k, v = make_qkv(1, 2, 2, 40, 8, 16, torch.float32, grad=True)
    out = flash_attention(q, k, v, causal=True)
    assert torch.all(out[:, :, :32] == 0) and torch.isfinite(out).all()
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.all(dq[:, :, :32] == 0) and torch.isfinite(dk).all() and torch.isfinite(dv).all()


# ---------------------------------------------------------------- loop bounds skip tiles
@triton.jit
def _band_probe(Out, Lq, Lk, window, BLOCK_M: triton.language.constexpr,
                BLOCK_N: triton.language.constexpr, CAUSAL: triton.language.constexpr,
                HAS_WINDOW: triton.language.constexpr):
    pid = triton.language.program_id(0)
    lo, full_lo, full_hi, hi = _common._key_band(pid * BLOCK_M, Lq, Lk, window, BLOCK_M, BLOCK_N,
                                                 CAUSAL, HAS_WINDOW)
    qlo, qhi = _common._query_band(pid * BLOCK_N, Lq, Lk, window, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)
    for i, x in enumerate((lo, full_lo, full_hi, hi, qlo, qhi)):
        triton.language.store(Out + pid * 6 + i, x)


@pytest.mark.parametrize("lq,lk,causal,window", [
    (200, 200, True, None), (100, 230, True, None), (230, 100, True, None),
    (200, 200, True, 50), (150, 260, False, 70), (260, 150, False, 33), (200, 200, False, None)])
def test_band_bounds_skip_invisible_tiles_and_unmask_full_ones(lq, lk, causal, window):
    bm, bn = 32, 64
    blocks = max(triton.cdiv(lq, bm), triton.cdiv(lk, bn))
    out = torch.zeros(blocks * 6, dtype=torch.int32)
    _band_probe[(blocks,)](out, lq, lk, window or 0, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal,
                           HAS_WINDOW=window is not None)
    mask = visible_mask(lq, lk, causal=causal, window=window)
    for blk, (lo, full_lo, full_hi, hi, qlo, qhi) in enumerate(out.view(-1, 6).tolist()):
        rows = mask[blk * bm:(blk + 1) * bm]
        if blk * bm < lq:
            seen = rows.any(0).nonzero().flatten()
            if len(seen):  # every visible key lies in [lo, hi), and no whole tile is wasted
                assert lo <= seen.min() and seen.max() < hi
                assert lo // bn == seen.min() // bn and (hi - 1) // bn == seen.max() // bn
            else:
                assert lo >= hi
            assert lo <= full_lo <= full_hi <= max(hi, lo) and (full_lo % bn == 0 or full_lo == hi)
            assert rows[:, full_lo:full_hi].all(), "an unmasked tile has a hidden key"
        if blk * bn < lk:  # the dK/dV side: query rows that see key tile blk
            seen_q = mask[:, blk * bn:(blk + 1) * bn].any(1).nonzero().flatten()
            if len(seen_q):
                assert qlo <= seen_q.min() and seen_q.max() < qhi
                assert qlo // bm == seen_q.min() // bm


# ---------------------------------------------------------------- input checks and availability
@pytest.mark.parametrize("change,message", [
    (lambda q, k, v: (q[0], k, v), "must be 4-D"),
    (lambda q, k, v: (q, k[..., :8], v[..., :8]), "must agree on B and D"),
    (lambda q, k, v: (q, k, v[:, :, :5]), "shapes differ"),
    (lambda q, k, v: (q[:, :3], k, v), "must divide"),
    (lambda q, k, v: (q, k.half(), v), "dtypes differ"),
    (lambda q, k, v: (q.double(), k.double(), v.double()), "not supported"),
    (lambda q, k, v: (q.transpose(2, 3), k, v), "contiguous last dimension"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    q, k, v = make_qkv(1, 4, 2, 8, 8, 16, torch.float32)
    with pytest.raises(ValueError, match=message):
        flash_attention(*change(q, k, v))


def test_bad_window_and_slopes():
    q, k, v = make_qkv(1, 4, 2, 8, 8, 16, torch.float32)
    with pytest.raises(ValueError, match="window"):
        flash_attention(q, k, v, window=0)
    with pytest.raises(ValueError, match="alibi_slopes must have shape"):
        flash_attention(q, k, v, alibi_slopes=torch.ones(2))
    big = torch.zeros(1, 1, 4, 300)
    with pytest.raises(ValueError, match="head dim 300"):
        flash_attention(big, big, big)


def test_unavailable_reason():
    assert triton_unavailable_reason() is None  # interpreting
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import attnbench.kernels as m; print(m.triton_unavailable_reason())"
    if not torch.cuda.is_available():
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == "no CUDA device", out.stderr
    blocked = "import sys; sys.modules['triton'] = None; " + code  # import triton -> ImportError
    out = subprocess.run([sys.executable, "-c", blocked], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "triton not installed", out.stderr
