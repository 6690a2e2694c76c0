"""attnbench.kernels.decode (split-KV Flash-Decoding) under the Triton interpreter, against the
materialised oracle (see test_kernels_flash for the tolerance rule)."""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.interpreter
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)", allow_module_level=True)
pytest.importorskip("triton")

from test_kernels_flash import check_forward_backward, make_qkv, max_err  # noqa: E402

from attnbench.kernels import flash_attention, flash_decode  # noqa: E402
from attnbench.kernels.decode import default_num_splits  # noqa: E402

# (B, Hq, Hkv, Lq, Lk, D, num_splits, causal)
CASES = {
    "gqa8-1q-default-splits": (2, 8, 1, 1, 300, 64, None, False),
    "gqa4-1q-lk-not-multiple": (1, 8, 2, 1, 100, 40, 3, False),
    "mha-4q-causal": (1, 2, 2, 4, 257, 80, 4, True),
    "gqa-rows-over-64": (1, 32, 2, 4, 70, 16, 2, False),  # G·Lq = 64 -> one full row tile
    "gqa-rows-split-in-two": (1, 16, 1, 5, 90, 32, 2, True),  # G·Lq = 80 -> two row tiles
    "more-splits-than-chunks": (1, 4, 4, 1, 20, 64, 8, False),  # empty splits merge as 0 weight
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_decode_matches_oracle(name, dtype):
    b, hq, hkv, lq, lk, d, splits, causal = CASES[name]
    q, k, v = make_qkv(b, hq, hkv, lq, lk, d, dtype)
    check_forward_backward(lambda q, k, v: flash_decode(q, k, v, num_splits=splits, causal=causal),
                           dict(causal=causal), q, k, v, grads=False)


def test_decode_agrees_with_flash_attention_for_every_split_count():
    q, k, v = make_qkv(1, 4, 1, 2, 129, 32, torch.float32)
    want = flash_attention(q, k, v, causal=True, softmax_scale=0.2)
    for splits in (1, 2, 5, 16):
        got = flash_decode(q, k, v, num_splits=splits, causal=True, softmax_scale=0.2)
        assert max_err(got, want) < 1e-5, splits


def test_causal_rows_with_no_key_are_zero():
    q, k, v = make_qkv(1, 2, 1, 6, 3, 16, torch.float32)
    out = flash_decode(q, k, v, causal=True, num_splits=2)
    assert torch.all(out[:, :, :3] == 0) and torch.isfinite(out).all()


def test_default_num_splits():
    cpu = torch.device("cpu")
    assert default_num_splits(1, 1, 100, cpu) == 1  # short cache: one chunk
    assert default_num_splits(1, 1, 100_000, cpu) == 32  # 2 × 16 (interpreter "SMs")
    assert default_num_splits(64, 1, 100_000, cpu) == 1  # batch × heads fill the grid already


def test_forward_only_and_limits():
    q, k, v = make_qkv(1, 2, 1, 1, 50, 16, torch.float32, grad=True)
    with pytest.raises(ValueError, match="forward-only"):
        flash_decode(q, k, v)
    with torch.no_grad():
        assert flash_decode(q, k, v).grad_fn is None
    q2, k2, v2 = make_qkv(1, 2, 1, 17, 50, 16, torch.float32)
    with pytest.raises(ValueError, match="Lq=17 > 16"):
        flash_decode(q2, k2, v2)
    with pytest.raises(ValueError, match="num_splits"):
        flash_decode(q2[:, :, :1], k2, v2, num_splits=0)
