"""A model's own softmax scale (variants/scaling.py): every CPU backend of the exact family and
sliding_window computes softmax(scale·q·kᵀ) against a materialised fp64 oracle; scale = 0 is the
variant untouched; a bad scale is refused with the reason."""

from __future__ import annotations

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.variants import registry

CPU = torch.device("cpu")
SKIP = ("flex", "hf-flex", "triton")  # compile / GPU-only: their own tests


def oracle(q, k, v, scale, causal, window=None):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    lq, lk = q.shape[2], k.shape[2]
    i = torch.arange(lq)[:, None] + lk - lq
    j = torch.arange(lk)[None, :]
    ok = (j <= i) if causal else torch.ones(lq, lk, dtype=torch.bool)
    if window:
        ok &= (i - j).abs() < window
    return s.masked_fill(~ok, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("variant, params", [("gqa", {}), ("causal", {}), ("sliding_window", {"window": 8})])
def test_every_backend_honours_the_scale(variant, params):
    v = registry.get(variant)
    p = v.resolve(Problem(batch=1, heads=4, kv_heads=2 if variant != "causal" else 4, seq_q=24, seq_k=24,
                          head_dim=16, dtype="float32", causal=True, mode="fwd").with_params(scale=0.05, **params))
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 24, 16, generator=g, dtype=torch.float64) * 4
    k, val = (torch.randn(1, p.kv_heads, 24, 16, generator=g, dtype=torch.float64) for _ in range(2))
    want = oracle(q, k, val, 0.05, True, params.get("window"))
    default = oracle(q, k, val, 16 ** -0.5, True, params.get("window"))
    assert (want - default).norm() / want.norm() > 1e-2  # the scale changes the answer at these inputs
    ran = 0
    for b in v.backends:
        if b.name in SKIP or b.test_only or not registry.decide(v, b.name, p, CPU).runnable:
            continue
        out = b.build(p, CPU)(q.float(), k.float(), val.float()).double()
        assert (out - want).norm() / want.norm() < 1e-5, b.name
        ran += 1
    assert ran >= 3
    assert (v.reference(q, k, val, p) - want).norm() / want.norm() < 1e-12


def test_scale_zero_is_untouched_and_a_bad_scale_is_refused():
    v = registry.get("gqa")
    p = v.resolve(Problem(heads=4, kv_heads=2, seq_q=8, seq_k=8, head_dim=16, dtype="float32", mode="fwd"))
    assert p.param("scale") is None and "scale" not in dict(p.params)
    d = registry.decide(v, "eager", p.with_params(scale=-1.0), CPU)
    assert d.status == "unsupported" and "scale must be a finite number" in d.reason
