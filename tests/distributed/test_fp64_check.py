"""The distributed strategies' oracle: exact attention in float64, chunked over query rows."""

import pytest
import torch

from attnbench.distributed import rank as rank_mod
from attnbench.variants.shared import softmax_attention


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_chunked_fp64_attention_equals_the_materialised_one(monkeypatch, causal, kv_heads):
    monkeypatch.setattr(rank_mod, "CHUNK_SCORES", 4 * 37 * 3)  # 3 rows a chunk: chunk edges inside the mask
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 37, 16, generator=g)
    k, v = (torch.randn(1, kv_heads, 37, 16, generator=g) for _ in range(2))
    want = softmax_attention(q.double(), k.double(), v.double(), causal=causal)
    got = rank_mod.fp64_attention(q, k, v, causal)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=0, atol=1e-13)
    if causal:  # the chunked mask really masks: the first row equals its only value
        assert torch.allclose(got[0, :, 0], v.double().repeat_interleave(4 // kv_heads, 1)[0, :, 0], atol=1e-13)
