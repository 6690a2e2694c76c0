"""The nsa variant (native sparse attention, three gated branches) against a reference written here:
per query and head in float64, the pooled blocks it sees, the block importances (summed over the
KV head's query heads, and under select_by=query_block over the queries of the query's block), the
forced and top blocks, the window; then the gated sum. Every backend (flex compiled, Triton
interpreted) against it. Pair counts against the masks."""

from __future__ import annotations

import math
import os

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.variants import nsa, registry
from conftest import rel_l2

SMALL = {"cmp_block": 8, "stride": 4, "block": 16, "topk_blocks": 4, "window": 20}


def problem(mode="fwd", seq=100, h=4, hkv=2, **params):
    raw = Problem(batch=2, heads=h, kv_heads=hkv, seq_q=seq, seq_k=seq, head_dim=16, mode=mode,
                  params=tuple(sorted((SMALL | params).items())))
    return nsa.NSA.resolve(raw)


def attend(qv, keys, vals):
    s = keys @ qv / math.sqrt(qv.shape[0])
    return torch.softmax(s, 0) @ vals


def loop_reference(q, k, v, p):
    lc, d, ls, n, w = (p.param(x) for x in ("cmp_block", "stride", "block", "topk_blocks", "window"))
    b_n, hq, lq, dim = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = hq // hkv
    gate = nsa.gates(p, "cpu", torch.float64)
    out = torch.zeros(b_n, hq, lq, dim, dtype=torch.float64)
    for b in range(b_n):
        probs_of = [cmp_branch(q, k, v, p, b, i) for i in range(lq)]
        for i in range(lq):
            ip = i + lk - lq
            o_cmp = probs_of[i][0]
            same = ([r for r in range(lq) if (r + lk - lq) // ls == ip // ls]
                    if p.param("select_by") == "query_block" else [i])
            for h in range(hq):
                K, V = k[b, h // g].double(), v[b, h // g].double()
                cur = ip // ls
                group = range((h // g) * g, (h // g + 1) * g)
                imp = {j: sum(pv for r in same for hh in group for c, pv in probs_of[r][1][hh].items()
                              if c * d < (j + 1) * ls and c * d + lc > j * ls) for j in range(cur + 1)}
                forced = {0, cur, max(cur - 1, 0)}
                rest = sorted((j for j in imp if j not in forced), key=lambda j: -imp[j])
                chosen = sorted(forced | set(rest[: n - len(forced)]))
                toks = [t for j in chosen for t in range(j * ls, min((j + 1) * ls, ip + 1))]
                win = list(range(max(0, ip - w + 1), ip + 1))
                qv = q[b, h, i].double()
                out[b, h, i] = (gate[b, h, i, 0] * o_cmp[h] + gate[b, h, i, 1] * attend(qv, K[toks], V[toks])
                                + gate[b, h, i, 2] * attend(qv, K[win], V[win]))
    return out


def cmp_branch(q, k, v, p, b, i):
    """({head: o_cmp}, {head: {pooled block: probability}}) of query i in batch element b."""
    lc, d = p.param("cmp_block"), p.param("stride")
    _, hq, lq, dim = q.shape
    g, lk = hq // k.shape[1], k.shape[2]
    ip = i + lk - lq
    probs, o_cmp = {}, {}
    for h in range(hq):
        K, V = k[b, h // g].double(), v[b, h // g].double()
        blocks = [c for c in range(max(0, (lk - lc) // d + 1)) if c * d + lc - 1 <= ip]
        if blocks:
            kc = torch.stack([K[c * d:c * d + lc].mean(0) for c in blocks])
            vc = torch.stack([V[c * d:c * d + lc].mean(0) for c in blocks])
            pr = torch.softmax(kc @ q[b, h, i].double() / math.sqrt(dim), 0)
            o_cmp[h], probs[h] = pr @ vc, dict(zip(blocks, pr.tolist()))
        else:
            o_cmp[h], probs[h] = torch.zeros(dim, dtype=torch.float64), {}
    return o_cmp, probs


CPU = torch.device("cpu")


def inputs(p):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, p.heads, p.seq_q, 16, generator=g)
    k, v = (torch.randn(2, p.kv_heads, p.seq_k, 16, generator=g) for _ in range(2))
    return q, k, v


def run(backend, p, q, k, v):
    with torch.no_grad():
        return nsa.NSA.backend(backend).build(p, CPU)(q, k, v)


@pytest.mark.parametrize("case", [dict(seq=100), dict(seq=130, mode="decode"), dict(seq=70, h=2, hkv=1, topk_blocks=3),
                                  dict(seq=100, select_by="query_block")],
                         ids=["prefill", "decode", "mqa-top3", "query-block"])
def test_eager_matches_the_loop_reference(case):
    p = problem(**case)
    q, k, v = inputs(p)
    assert rel_l2(run("eager", p, q, k, v), loop_reference(q, k, v, p)) < 1e-5


@pytest.mark.parametrize("case", [dict(seq=100, select_by="query_block"), dict(seq=130, mode="decode")],
                         ids=["prefill-qblock", "decode"])
def test_triton_matches_the_loop_reference(case):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    p = problem(**case)
    assert registry.decide(nsa.NSA, "triton", p, CPU, check_availability=False).runnable
    q, k, v = inputs(p)
    assert rel_l2(run("triton", p, q, k, v), loop_reference(q, k, v, p)) < 1e-5


@pytest.mark.slow  # FlexAttention compiles (~20 s on two cores)
def test_flex_matches_the_loop_reference():
    for case in (dict(seq=96), dict(seq=100, select_by="query_block"), dict(seq=130, mode="decode")):
        p = problem(**case)
        q, k, v = inputs(p)
        assert rel_l2(run("flex", p, q, k, v), loop_reference(q, k, v, p)) < 1e-5, case


def test_query_block_selection_is_shared_by_a_block_and_per_token_refused_by_triton():
    tok, blk = problem(seq=128), problem(seq=128, select_by="query_block")
    q, k, _ = inputs(tok)
    _, p_cmp = nsa.compressed(q, k, k, tok)
    by_token, by_block = nsa.selected_blocks(p_cmp, tok, 2), nsa.selected_blocks(p_cmp, blk, 2)
    rows = by_block.view(2, 2, 8, 16, -1)
    assert torch.equal(rows, rows[:, :, :, :1].expand_as(rows))
    assert not torch.equal(by_token, by_block)
    assert int(nsa.selected_mask(p_cmp, blk, 2).sum()) == 2 * 4 * nsa.branch_pairs(blk)["selected"]
    reason = registry.decide(nsa.NSA, "triton", tok, CPU, check_availability=False).reason
    assert "select_by=token selects per query" in reason


def test_pairs_per_branch_match_the_masks():
    p = problem(seq=100)
    q = torch.randn(2, 4, 100, 16, dtype=torch.float64)
    k = torch.randn(2, 2, 100, 16, dtype=torch.float64)
    _, p_cmp = nsa.compressed(q, k, k, p)
    pairs = nsa.branch_pairs(p)
    assert int(nsa.selected_mask(p_cmp, p, 2).sum()) == 2 * 4 * pairs["selected"]
    assert int(nsa.window_mask(p, "cpu").sum()) == pairs["window"]
    ends = torch.arange(nsa.n_cmp(p)) * 4 + 7
    assert pairs["compressed"] == int((torch.arange(100)[:, None] >= ends[None, :]).sum())
    assert nsa.nsa_flops(p) == 4 * 2 * 4 * 16 * sum(pairs.values()) + 2 * 2 * 2 * nsa.n_cmp(p) * 8 * 16


def test_supports():
    assert "topk_blocks must be >= 3" in nsa.NSA.why_unsupported(problem(topk_blocks=2))
    assert "would skip tokens" in nsa.NSA.why_unsupported(problem(stride=9))
    assert registry.decide(nsa.NSA, "eager", problem(mode="bwd"), torch.device("cpu")).status == "unsupported"
