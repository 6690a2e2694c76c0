"""The shared fp64 oracle (tests/conftest.py) checked against independent computations: torch SDPA
in float64 (GQA by enable_gqa; causal only where Lq == Lk, as SDPA aligns its causal mask top-left)
and a per-query loop for bottom-right causal masking with Lq != Lk."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnbench.core.problem import Problem


@pytest.mark.parametrize("hq,hkv,causal", [(4, 4, False), (4, 2, False), (4, 1, True), (2, 2, True)])
def test_oracle_matches_sdpa_in_fp64(make_qkv, oracle, hq, hkv, causal):
    p = Problem(batch=2, heads=hq, kv_heads=hkv, seq_q=48, seq_k=48, head_dim=16)
    q, k, v = make_qkv(p, seed=1, dtype=torch.float64)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=hq != hkv)
    got = oracle(q, k, v, causal=causal)
    assert got.dtype == torch.float64 and got.shape == (2, hq, 48, 16)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lq,lk", [(5, 9), (1, 7), (9, 5)])
def test_oracle_causal_is_bottom_right_aligned(make_qkv, oracle, lq, lk):
    p = Problem(batch=1, heads=2, kv_heads=1, seq_q=lq, seq_k=lk, head_dim=8)
    q, k, v = make_qkv(p, seed=2, dtype=torch.float64)
    got = oracle(q, k, v, causal=True)
    for h in range(2):
        for i in range(lq):
            last = i + lk - lq  # query i sees keys 0..last
            if last < 0:
                assert torch.count_nonzero(got[0, h, i]) == 0  # sees nothing: zeros, not NaN
                continue
            s = torch.tensor([q[0, h, i] @ k[0, 0, j] / math.sqrt(8) for j in range(last + 1)], dtype=torch.float64)
            w = torch.softmax(s, dim=0)
            torch.testing.assert_close(got[0, h, i], w @ v[0, 0, : last + 1], rtol=1e-12, atol=1e-12)


def test_seeded_inputs_repeat_and_have_the_problem_shapes(make_qkv):
    p = Problem(batch=1, heads=4, kv_heads=2, seq_q=8, seq_k=6, head_dim=4)
    a, b = make_qkv(p, seed=5), make_qkv(p, seed=5)
    assert [t.shape for t in a] == [(1, 4, 8, 4), (1, 2, 6, 4), (1, 2, 6, 4)] and a[0].dtype == torch.float32
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], make_qkv(p, seed=6)[0])
