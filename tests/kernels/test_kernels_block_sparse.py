"""attnbench.kernels.block_sparse under the Triton interpreter, against the materialised oracle
with the layout expanded to a token mask (see test_kernels_flash for the tolerance rule)."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

pytestmark = pytest.mark.interpreter
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)", allow_module_level=True)
pytest.importorskip("triton")

from test_kernels_flash import check_forward_backward, make_qkv, max_err  # noqa: E402

from attnbench.kernels import block_sparse_attention, build_block_index, flash_attention  # noqa: E402


def token_mask(layout: torch.Tensor, block: int, lq: int, lk: int) -> torch.Tensor:
    """(nqb, nkb) or (H, nqb, nkb) -> (1 or H, Lq, Lk) bool, tails cut."""
    lay = layout if layout.dim() == 3 else layout[None]
    return lay.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :lq, :lk]


def random_layout(shape, seed: int, density=0.5) -> torch.Tensor:
    layout = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density
    layout[..., 1, :] = False  # query block 1 attends nothing: its rows must output 0
    return layout


def local_global(nqb: int, nkb: int, width=1) -> torch.Tensor:
    """BigBird-like: a diagonal band of blocks plus the first key block (global)."""
    i = torch.arange(nqb)[:, None] + (nkb - nqb)
    j = torch.arange(nkb)[None, :]
    return ((i - j).abs() <= width) | (j == 0)


def _check(b, hq, hkv, lq, lk, d, block, layout, causal, dtype, grads, seed=0):
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d, dtype, seed=seed, grad=grads)
    index = build_block_index(layout, block=block)
    kw = dict(causal=causal, allowed=token_mask(layout, block, lq, lk)[None])
    check_forward_backward(lambda q, k, v: block_sparse_attention(q, k, v, index, causal=causal),
                           kw, q, k, v, grads)


# (B, Hq, Hkv, Lq, Lk, D, block, per-head layout, causal)
CASES = {
    "mha-b32": (1, 2, 2, 100, 130, 40, 32, False, False),
    "gqa-perhead-causal-b16": (1, 4, 2, 129, 129, 64, 16, True, True),
    "mqa-causal-lq<lk-b64": (2, 2, 1, 70, 200, 16, 64, False, True),
    "causal-lq>lk-b32": (1, 2, 2, 150, 90, 80, 32, False, True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_random_layouts_forward_backward(name, dtype):
    b, hq, hkv, lq, lk, d, block, per_head, causal = CASES[name]
    nqb, nkb = -(-lq // block), -(-lk // block)
    layout = random_layout((hq, nqb, nkb) if per_head else (nqb, nkb), seed=len(name))
    _check(b, hq, hkv, lq, lk, d, block, layout, causal, dtype, grads=True)


@pytest.mark.parametrize("causal", [False, True])
def test_per_batch_and_head_layouts_forward_backward(causal):
    """A layout per (batch element, query head), B·Hq of them in that order (MoBA's and NSA's
    input-dependent selections): every row, dQ and the CSC path of dK/dV read their own."""
    b, hq, hkv, lq, block = 2, 4, 2, 96, 32
    layout = random_layout((b * hq, 3, 3), seed=11)
    q, k, v = make_qkv(b, hq, hkv, lq, lq, 32, torch.float32, seed=3, grad=True)
    index = build_block_index(layout, block=block)
    allowed = token_mask(layout, block, lq, lq).view(b, hq, lq, lq)
    check_forward_backward(lambda q, k, v: block_sparse_attention(q, k, v, index, causal=causal),
                           dict(causal=causal, allowed=allowed), q, k, v, True)


@pytest.mark.parametrize("causal", [False, True])
def test_structured_local_global_layout(causal):
    lq = lk = 200
    _check(1, 2, 1, lq, lk, 32, 32, local_global(7, 7), causal, torch.float16, grads=False)


def test_dense_causal_layout_equals_flash_attention():
    q, k, v = make_qkv(1, 2, 1, 100, 160, 32, torch.float32)
    layout = torch.ones(4, 5, dtype=torch.bool)
    out = block_sparse_attention(q, k, v, layout, block=32, causal=True)
    assert max_err(out, flash_attention(q, k, v, causal=True)) < 1e-5


def test_empty_row_outputs_zero_with_zero_grads():
    q, k, v = make_qkv(1, 2, 2, 64, 64, 16, torch.float32, grad=True)
    layout = torch.tensor([[True, True], [False, False]])
    out = block_sparse_attention(q, k, v, layout, block=32)
    assert torch.all(out[:, :, 32:] == 0) and torch.isfinite(out).all()
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.all(dq[:, :, 32:] == 0) and torch.isfinite(dk).all() and torch.isfinite(dv).all()


def test_build_block_index_csr_and_csc():
    layout = torch.tensor([[True, False, True],
                           [False, False, False],
                           [True, True, False]])
    idx = build_block_index(layout, block=16)
    assert idx.row_ptr.tolist() == [0, 2, 2, 4] and idx.col_idx.tolist() == [0, 2, 0, 1]
    assert idx.col_ptr.tolist() == [0, 2, 3, 4] and idx.row_idx.tolist() == [0, 2, 2, 0]
    assert (idx.heads, idx.n_q_blocks, idx.n_k_blocks, idx.nnz) == (1, 3, 3, 4)
    assert idx.density == pytest.approx(4 / 9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        idx.block = 32
    per_head = build_block_index(torch.stack([layout, ~layout]), block=16)
    assert per_head.heads == 2 and per_head.row_ptr.tolist()[-1] == 9


def test_layout_and_prebuilt_index_agree():
    q, k, v = make_qkv(1, 2, 2, 90, 90, 16, torch.float32)
    layout = random_layout((3, 3), seed=5)
    a = block_sparse_attention(q, k, v, layout, block=32)
    b = block_sparse_attention(q, k, v, build_block_index(layout, block=32))
    assert torch.equal(a, b)


def test_bad_layouts_raise():
    q, k, v = make_qkv(1, 2, 2, 90, 90, 16, torch.float32)
    with pytest.raises(ValueError, match="need 3×3"):
        block_sparse_attention(q, k, v, torch.ones(2, 3, dtype=torch.bool), block=32)
    with pytest.raises(ValueError, match="bool"):
        block_sparse_attention(q, k, v, torch.ones(3, 3), block=32)
    with pytest.raises(ValueError, match="block must be one of"):
        build_block_index(torch.ones(3, 3, dtype=torch.bool), block=48)
    with pytest.raises(ValueError, match="index was built with block=32"):
        block_sparse_attention(q, k, v, build_block_index(torch.ones(3, 3, dtype=torch.bool), block=32),
                               block=64)
    with pytest.raises(ValueError, match="layout has 3 heads"):
        block_sparse_attention(q, k, v, torch.ones(3, 3, 3, dtype=torch.bool), block=32)
