"""The moba variant (mixture of block attention) against a reference written here: per query and
head, in float64, the block means of the past blocks, the top (k − 1) by q · mean, then softmax over
those blocks' tokens and the current block up to the query. Pair counts against the mask's."""

from __future__ import annotations

import math

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.variants import moba, registry
from conftest import rel_l2


def problem(mode="fwd", seq=100, block=16, top=3, h=4, hkv=2, b=2):
    raw = Problem(batch=b, heads=h, kv_heads=hkv, seq_q=seq, seq_k=seq, head_dim=16, mode=mode,
                  params=(("block", block), ("topk_blocks", top)))
    return moba.MOBA.resolve(raw)


def loop_reference(q, k, v, p):
    bs, top = p.param("block"), p.param("topk_blocks")
    b_n, hq, lq, d = q.shape
    g, lk = hq // k.shape[1], k.shape[2]
    out = torch.zeros(b_n, hq, lq, d, dtype=torch.float64)
    for b in range(b_n):
        for h in range(hq):
            keys, vals = k[b, h // g].double(), v[b, h // g].double()
            for i in range(lq):
                ip = i + lk - lq
                cur = ip // bs
                gates = [float(q[b, h, i].double() @ keys[j * bs:(j + 1) * bs].mean(0)) for j in range(cur)]
                chosen = sorted(range(cur), key=lambda j: -gates[j])[: top - 1]
                toks = [t for j in chosen for t in range(j * bs, (j + 1) * bs)] + list(range(cur * bs, ip + 1))
                s = q[b, h, i].double() @ keys[toks].T / math.sqrt(d)
                out[b, h, i] = torch.softmax(s, -1) @ vals[toks]
    return out


def inputs(p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(p.batch, p.heads, p.seq_q, 16, generator=g),
            torch.randn(p.batch, p.kv_heads, p.seq_k, 16, generator=g),
            torch.randn(p.batch, p.kv_heads, p.seq_k, 16, generator=g))


@pytest.mark.parametrize("case", [dict(seq=100), dict(seq=150, mode="decode"), dict(seq=40, top=1),
                                  dict(seq=70, block=32, top=5)], ids=["prefill", "decode", "current-only", "few"])
def test_backends_match_the_loop_reference(case):
    p = problem(**case)
    q, k, v = inputs(p)
    ref = loop_reference(q, k, v, p)
    for backend in ("eager", "gather"):
        with torch.no_grad():
            out = moba.MOBA.backend(backend).build(p, torch.device("cpu"))(q, k, v)
        assert rel_l2(out, ref) < 1e-5, backend
    mask = moba.token_mask(moba.select_blocks(q, k, p), p, "cpu")
    assert int(mask.sum()) == p.batch * p.heads * moba.attended_pairs(p)


def test_flops_count_pairs_gates_and_means():
    p = problem(seq=64, block=16, top=2, b=1)  # blocks 0..3; query i: cur = i // 16
    pairs = sum(min(1, i // 16) * 16 + i % 16 + 1 for i in range(64))
    gates = sum(i // 16 for i in range(64))
    assert moba.moba_flops(p) == 2 * 4 * 16 * gates + 2 * 64 * 16 + 4 * 4 * 16 * pairs


def test_supports_and_picture():
    assert "bad block 0" in moba.MOBA.why_unsupported(problem(block=0))
    assert registry.decide(moba.MOBA, "eager", problem(mode="bwd"), torch.device("cpu")).status == "unsupported"
    from attnbench.report.gallery import picture

    t, _ = picture("moba", 256, {"block": 32})
    assert t.shape == (256, 256) and bool(torch.all(torch.triu(t, 1) == 0))  # causal
    assert float(t.sum()) == moba.attended_pairs(moba.MOBA.resolve(Problem(
        batch=1, heads=1, kv_heads=0, seq_q=256, seq_k=0, params=(("block", 32), ("topk_blocks", 3)))))
