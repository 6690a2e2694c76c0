"""The nsa variant (native sparse attention, three gated branches) against a reference written here:
per query and head in float64, the pooled blocks it sees, the block importances (summed over the
KV head's query heads), the forced and top blocks, the window; then the gated sum. Pair counts."""

from __future__ import annotations

import math

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
        for i in range(lq):
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
            for h in range(hq):
                K, V = k[b, h // g].double(), v[b, h // g].double()
                cur = ip // ls
                group = range((h // g) * g, (h // g + 1) * g)
                imp = {j: sum(pv for hh in group for c, pv in probs[hh].items()
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


@pytest.mark.parametrize("case", [dict(seq=100), dict(seq=130, mode="decode"), dict(seq=70, h=2, hkv=1, topk_blocks=3)],
                         ids=["prefill", "decode", "mqa-top3"])
def test_eager_matches_the_loop_reference(case):
    p = problem(**case)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, p.heads, p.seq_q, 16, generator=g)
    k, v = (torch.randn(2, p.kv_heads, p.seq_k, 16, generator=g) for _ in range(2))
    with torch.no_grad():
        out = nsa.NSA.backend("eager").build(p, torch.device("cpu"))(q, k, v)
    assert rel_l2(out, loop_reference(q, k, v, p)) < 1e-5


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
