"""transformers' attention functions as backends (variants/backends/hf.py): each agrees with the
variant's fp64-checked reference on the exact, GQA, sliding-window, soft-cap, sink and scale cases,
refuses what transformers itself cannot do, and says what a user sets."""

from __future__ import annotations

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.variants import registry
from attnbench.variants.backends.hf import IMPLEMENTATION, transformers_missing

if transformers_missing():
    pytest.skip(transformers_missing(), allow_module_level=True)

CPU = torch.device("cpu")
CASES = [("mha", {}), ("gqa", {}), ("gqa", {"scale": 0.3}), ("sliding_window", {"window": 16}),
         ("gqa", {"softcap": 5.0}), ("sliding_window", {"window": 16, "sink_logit": "learned"}),
         ("sliding_window", {"window": 16, "softcap": 5.0, "scale": 0.2})]


def problem(var, params, mode):
    v = registry.get(var)
    lq = 1 if mode == "decode" else 48
    return v, v.resolve(Problem(batch=2, heads=8, kv_heads=8 if var == "mha" else 2, seq_q=lq, seq_k=48, head_dim=32,
                                dtype="float32", causal=var != "mha", mode=mode).with_params(**params))


@pytest.mark.parametrize("var, params", CASES)
@pytest.mark.parametrize("backend", ["hf-eager", "hf-sdpa"])
def test_hf_backend_matches_the_reference_or_refuses(var, params, backend):
    for mode in ("fwd", "decode"):
        v, p = problem(var, params, mode)
        why = registry.decide(v, backend, p, CPU)
        if backend == "hf-sdpa" and (params.get("softcap") or params.get("sink_logit")):
            assert why.status == "unsupported" and "transformers' sdpa" in why.reason
            continue
        assert why.runnable, why.reason
        g = torch.Generator().manual_seed(1)
        q = torch.randn(2, 8, p.seq_q, 32, generator=g, dtype=torch.float64)
        k, val = (torch.randn(2, p.kv_heads, 48, 32, generator=g, dtype=torch.float64) for _ in range(2))
        ref = v.reference(q, k, val, p)
        out = v.backend(backend).build(p, CPU)(q.float(), k.float(), val.float()).double()
        assert ((out - ref).norm() / ref.norm()) < 1e-5, (var, params, mode)


def test_the_implementation_a_user_sets():
    assert IMPLEMENTATION == {"hf-eager": "eager", "hf-sdpa": "sdpa", "hf-flex": "flex_attention"}
    b = registry.get("gqa").backend("hf-sdpa")
    assert 'attn_implementation="sdpa"' in b.description


@pytest.mark.slow
def test_hf_flex_matches_on_a_softcapped_window():  # compiles flex_attention on the CPU: slow
    v, p = problem("sliding_window", {"window": 16, "softcap": 5.0, "scale": 0.2}, "fwd")
    q, k, val = torch.randn(2, 8, 48, 32), torch.randn(2, 2, 48, 32), torch.randn(2, 2, 48, 32)
    ref = v.reference(q.double(), k.double(), val.double(), p)
    out = v.backend("hf-flex").build(p, CPU)(q, k, val).double()
    assert ((out - ref).norm() / ref.norm()) < 1e-5
