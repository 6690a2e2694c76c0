"""The moba variant (mixture of block attention) against a reference written here: per query and
head, in float64, the block means of the past blocks, the top (k − 1) by q · mean (under
select_by=query_block: by the mean query of the queries in the same block), then softmax over
those blocks' tokens and the current block up to the query. Every backend (flex compiled, Triton
interpreted) against it; pair and FLOP counts against counts made here."""

from __future__ import annotations

import math
import os

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.variants import moba, registry
from conftest import rel_l2

CPU = torch.device("cpu")


def problem(mode="fwd", seq=100, block=16, top=3, h=4, hkv=2, b=2, select_by="token"):
    raw = Problem(batch=b, heads=h, kv_heads=hkv, seq_q=seq, seq_k=seq, head_dim=16, mode=mode,
                  params=(("block", block), ("topk_blocks", top), ("select_by", select_by)))
    return moba.MOBA.resolve(raw)


def loop_reference(q, k, v, p):
    bs, top = p.param("block"), p.param("topk_blocks")
    b_n, hq, lq, d = q.shape
    g, lk = hq // k.shape[1], k.shape[2]
    by_block = p.param("select_by") == "query_block"
    out = torch.zeros(b_n, hq, lq, d, dtype=torch.float64)
    for b in range(b_n):
        for h in range(hq):
            keys, vals = k[b, h // g].double(), v[b, h // g].double()
            for i in range(lq):
                ip = i + lk - lq
                cur = ip // bs
                same = [r for r in range(lq) if (r + lk - lq) // bs == cur] if by_block else [i]
                qg = q[b, h, same].double().mean(0)
                gates = [float(qg @ keys[j * bs:(j + 1) * bs].mean(0)) for j in range(cur)]
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
                                  dict(seq=70, block=32, top=5), dict(seq=100, select_by="query_block")],
                         ids=["prefill", "decode", "current-only", "few", "query-block"])
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


BACKEND_CASES = [dict(seq=96, select_by="query_block"), dict(seq=100, select_by="query_block", top=2),
                 dict(seq=150, mode="decode")]


@pytest.mark.parametrize("case", BACKEND_CASES, ids=["prefill-qblock", "ragged-qblock", "decode"])
def test_triton_block_sparse_matches_the_loop_reference(case):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    p = problem(**case)
    assert registry.decide(moba.MOBA, "triton", p, CPU, check_availability=False).runnable
    q, k, v = inputs(p)
    out = moba.MOBA.backend("triton").build(p, CPU)(q, k, v)
    assert rel_l2(out, loop_reference(q, k, v, p)) < 1e-5


@pytest.mark.slow  # one FlexAttention compile (~15 s on two cores), then each case
def test_flex_matches_the_loop_reference_per_token_and_per_query_block():
    for case in (dict(seq=96), dict(seq=100, select_by="query_block"), dict(seq=150, mode="decode", b=1),
                 dict(seq=300, block=64, top=4, b=1, select_by="query_block")):  # 128-tiles, some full
        p = problem(**case)
        q, k, v = inputs(p)
        with torch.no_grad():
            out = moba.MOBA.backend("flex").build(p, CPU)(q, k, v)
        assert rel_l2(out, loop_reference(q, k, v, p)) < 1e-5, case


def test_query_block_selection_is_shared_by_a_block_and_differs_from_per_token():
    tok, blk = problem(seq=128, block=16), problem(seq=128, block=16, select_by="query_block")
    q, k, _ = inputs(tok, seed=3)
    by_token, by_block = moba.select_blocks(q, k, tok), moba.select_blocks(q, k, blk)
    rows = by_block.view(2, 4, 8, 16, -1)
    assert torch.equal(rows, rows[:, :, :, :1].expand_as(rows))  # one selection per query block
    assert not torch.equal(by_token, by_block)  # per token, queries of one block choose differently
    # the kernel's per-token refusal says why and what runs instead
    reason = registry.decide(moba.MOBA, "triton", tok, CPU, check_availability=False).reason
    assert "select_by=token selects per query" in reason and "query_block" in reason
    assert registry.decide(moba.MOBA, "triton", problem(block=24, select_by="query_block"), CPU,
                           check_availability=False).status == "unsupported"
    assert "bad select_by 'x'" in moba.MOBA.why_unsupported(problem(select_by="x"))


def test_flops_of_query_block_gates():
    p = problem(seq=64, block=16, top=2, b=1, select_by="query_block")  # query blocks 0..3
    pairs = sum(min(1, i // 16) * 16 + i % 16 + 1 for i in range(64))
    gates = 0 + 1 + 2 + 3  # query block c scores its c past blocks once
    assert moba.moba_flops(p) == (2 * 4 * 16 * gates + 4 * 64 * 16 + 2 * 64 * 16 + 4 * 4 * 16 * pairs)


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
