"""Ulysses and hybrid context parallelism: split rules and byte formulas (core/cp.py), the
placement and the all-to-all packing against fp64 softmax attention in one process, and one
real gloo run per strategy at world size 4 (slow: spawning ranks is slow here)."""

from __future__ import annotations

import pytest
import torch

from attnbench.core.cp import Degrees, degrees, heads_reason, kv_heads_after, rank_bytes, split_reason
from attnbench.core.problem import Problem
from attnbench.distributed.hybrid import make_placement, pack_heads, pack_seq, simulate, unpack_heads, unpack_seq
from attnbench.distributed.launch import run_cp_case
from attnbench.measure.timing import TimingPolicy
from attnbench.variants.shared import softmax_attention

CASES = [  # (strategy, ulysses degree, world, L, Hq, Hkv, causal)
    ("ulysses", None, 4, 64, 8, 8, True), ("ulysses", None, 4, 64, 8, 2, False),  # Hkv < U: replicated
    ("ulysses", None, 2, 32, 2, 1, True),  # MQA
    ("hybrid", 2, 4, 64, 4, 1, True), ("hybrid", 2, 4, 64, 4, 4, False), ("hybrid", 4, 8, 128, 4, 2, True),
    ("hybrid", 2, 6, 48, 2, 2, True),  # ring degree 3
]


def _inputs(L: int, hq: int, hkv: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, hq, L, 16, generator=g), torch.randn(1, hkv, L, 16, generator=g),
            torch.randn(1, hkv, L, 16, generator=g))


@pytest.mark.parametrize("strategy,u,world,L,hq,hkv,causal", CASES)
def test_simulated_strategy_matches_fp64_attention(strategy, u, world, L, hq, hkv, causal):
    d = degrees(strategy, world, u)
    assert split_reason(L, hq, hkv, d, causal) is None
    q, k, v = _inputs(L, hq, hkv)
    out = simulate(q, k, v, make_placement(L, causal, d), "sdpa")
    ref = softmax_attention(q.double(), k.double(), v.double(), causal=causal)
    assert (out.double() - ref).norm() / ref.norm() <= 1e-6


def test_placement_partitions_the_sequence():
    for d, causal in ((Degrees(2, 2), True), (Degrees(4, 1), False), (Degrees(2, 3), True)):
        pl = make_placement(48, causal, d)
        pos = torch.cat([pl.positions(r) for r in range(d.world)])
        assert sorted(pos.tolist()) == list(range(48))
    pl = make_placement(16, True, Degrees(2, 2))  # zig-zag ring shards (0-3, 12-15), (4-7, 8-11), cut in two
    assert [pl.positions(r).tolist() for r in range(4)] == [[0, 1, 2, 3], [12, 13, 14, 15], [4, 5, 6, 7],
                                                            [8, 9, 10, 11]]


def _swap(sends):
    return [torch.stack([s[i] for s in sends]) for i in range(len(sends))]


def test_alltoall_packing_trades_sequence_for_heads_and_back():
    u = 4
    pieces = [torch.randn(2, 8, 5, 3) for _ in range(u)]  # member m's (B, H, n, D) piece
    heads = [unpack_seq(got) for got in _swap([pack_seq(x, u) for x in pieces])]
    for j, h in enumerate(heads):  # member j: heads 2j, 2j+1 over all 4·5 positions, pieces in order
        assert torch.equal(h, torch.cat([x[:, 2 * j:2 * j + 2] for x in pieces], dim=2))
    back = [unpack_heads(got) for got in _swap([pack_heads(h, u) for h in heads])]
    assert all(torch.equal(a, b) for a, b in zip(back, pieces))


def test_heads_rules():
    assert heads_reason(8, 8, 4) is None and heads_reason(8, 2, 4) is None and heads_reason(8, 1, 8) is None
    assert "query heads" in heads_reason(6, 6, 4)
    assert "replicated" in heads_reason(12, 3, 4)  # 3 neither divides by 4 nor divides it
    assert kv_heads_after(8, 2, 4) == 4 and kv_heads_after(8, 8, 4) == 8


def test_split_reasons():
    assert split_reason(64, 8, 8, Degrees(2, 4), causal=True) is None
    assert "multiple of 16" in split_reason(72, 8, 8, Degrees(2, 4), causal=True)  # 2·R·U = 16
    assert "multiple of 8" in split_reason(36, 8, 8, Degrees(2, 4), causal=False)
    assert split_reason(61, 8, 8, Degrees(1, 4), causal=True) is None  # the ring alone takes uneven shards
    with pytest.raises(ValueError, match="divid"):
        degrees("hybrid", 6, 4)


def test_byte_formulas_by_hand():
    # Ulysses U=4, B=1, Hq=8, Hkv=2 (replicated to 4), L=64, D=16, fp32: each rank holds 16 positions;
    # q and out: 8 heads, k and v: 4 heads; 3/4 of each leaves the rank.
    per_head = 16 * 16 * 4
    expect = 3 * (8 + 4 + 4 + 8) * per_head // 4
    assert rank_bytes(1, 8, 2, 64, 16, 4, Degrees(4, 1)) == {"a2a": expect, "ring": 0, "total": expect}
    # ring R=4, Hkv=2: 3 steps of K and V of 16 positions
    assert rank_bytes(1, 8, 2, 64, 16, 4, Degrees(1, 4))["ring"] == 3 * 2 * 2 * 16 * 16 * 4
    # hybrid 2×2, Hkv=2: ring shards of 32 positions with 1 K/V head per rank, one step
    assert rank_bytes(1, 8, 2, 64, 16, 4, Degrees(2, 2))["ring"] == 2 * 1 * 32 * 16 * 4


@pytest.mark.slow
@pytest.mark.parametrize("strategy,u,hkv", [("ulysses", None, 2), ("hybrid", 2, 1)])
def test_gloo_run_is_exact_and_sends_the_formula(strategy, u, hkv):
    p = Problem(batch=1, heads=4, kv_heads=hkv, seq_q=256, seq_k=256, head_dim=16, causal=True,
                params=(("world_size", 4),))
    policy = TimingPolicy(min_samples=3, min_time=0.01, max_time=0.05, warmup_time=0.01)
    rec = run_cp_case(p, 4, strategy=strategy, ulysses=u, policy=policy, threads=1, baseline=False, timeout=120)
    assert rec["status"] == "ok", rec
    assert rec["error"]["rel_l2"] <= 1e-6
    d = rec["distributed"]
    expect = rank_bytes(1, 4, hkv, 256, 16, 4, degrees(strategy, 4, u))["total"]
    assert d["per_rank"]["bytes_sent"] == [expect] * 4 and d["bytes_match_model"] is True
    assert all(a <= c for a, c in zip(d["per_rank"]["a2a_ms"], d["per_rank"]["comm_ms"]))
    assert 0 < d["compute_share"] <= 1 and d["per_rank"]["pairs"] == d["per_rank"]["pairs_model"]


def test_variants_decide_their_cases_with_reasons(cpu):
    from attnbench.run.plan import expand, make_sweep, with_world_size

    alone = expand([make_sweep(variants="ulysses,hybrid,torch_cp", seq=[256])], cpu)
    assert all(c.status == "unsupported" and "--world-size" in c.reason for c in alone)
    four = {(c.variant, c.backend): c for c in with_world_size(alone, 4, cpu)}
    assert four[("ulysses", "sdpa")].status is None and four[("hybrid", "sdpa")].status is None
    assert four[("hybrid", "sdpa")].problem.param("ulysses") == 2
    assert four[("torch_cp", "torch")].status == "unsupported" and "CPU" in four[("torch_cp", "torch")].reason
    bad = with_world_size(expand([make_sweep(variants="hybrid", seq=[256], params={"ulysses": 3})], cpu), 4, cpu)
    assert all(c.status == "unsupported" and "dividing world_size=4" in c.reason for c in bad)
    odd = with_world_size(expand([make_sweep(variants="ulysses", seq=[250])], cpu), 4, cpu)
    assert all("multiple of 4" in c.reason for c in odd)
