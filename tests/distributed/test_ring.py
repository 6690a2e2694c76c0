"""Ring attention: layout, plan and merge against fp32 softmax attention (in one process), the
real ring over gloo with 2 and 4 ranks, zig-zag load balance, and a measured case end to end."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.distributed.launch import free_port, run_ring_case
from attnbench.distributed.layout import make_layout, plan, rank_pairs
from attnbench.distributed.ring import RankStats, ring_attention, simulate
from attnbench.measure.timing import TimingPolicy
from attnbench.run.plan import is_distributed, with_world_size
from attnbench.variants import ring as ring_variant
from attnbench.variants.shared import softmax_attention

CONFIGS = [  # (L, causal, Hq, Hkv): odd lengths that do not divide by 2·P, GQA
    (101, True, 4, 4), (101, False, 4, 4), (255, True, 4, 2), (64, True, 2, 2), (509, False, 2, 1),
]


def _inputs(L: int, hq: int, hkv: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, hq, L, 16, generator=g), torch.randn(1, hkv, L, 16, generator=g),
            torch.randn(1, hkv, L, 16, generator=g))


# ---------------------------------------------------------------- one process
@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("L,causal,hq,hkv", CONFIGS)
@pytest.mark.parametrize("block", ["eager", "sdpa"])
def test_simulated_ring_matches_softmax_attention(world, L, causal, hq, hkv, block):
    q, k, v = _inputs(L, hq, hkv)
    out, stats = simulate(q, k, v, make_layout(L, world, causal), block)
    ref = softmax_attention(q.double(), k.double(), v.double(), causal=causal).float()
    assert torch.allclose(out, ref, atol=2e-6, rtol=1e-5), (out - ref).abs().max()
    assert sum(s.pairs for s in stats) == Problem(seq_q=L, seq_k=L, causal=causal).attended_pairs()


@pytest.mark.parametrize("L,world", [(37, 2), (101, 4), (512, 3), (8, 4)])
def test_layouts_partition_the_sequence(L, world):
    for causal in (False, True):
        lay = make_layout(L, world, causal)
        pos = torch.cat([lay.positions(r) for r in range(world)])
        assert sorted(pos.tolist()) == list(range(L))
        assert max(lay.length(r) for r in range(world)) - min(lay.length(r) for r in range(world)) <= 2


def test_zigzag_holds_an_early_and_a_late_chunk():
    lay = make_layout(64, 4, causal=True)
    assert lay.chunks[0] == ((0, 8), (56, 64)) and lay.chunks[3] == ((24, 32), (32, 40))
    assert make_layout(64, 4, causal=False).chunks[1] == ((16, 32),)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("L", [512, 509])
def test_zigzag_balances_causal_work_within_5_percent(world, L):
    lay = make_layout(L, world, causal=True)
    model = [rank_pairs(lay, r) for r in range(world)]
    assert max(model) <= 1.05 * min(model)
    q, k, v = _inputs(L, 1, 1)
    _, stats = simulate(q, k, v, lay, "sdpa")
    assert [s.pairs for s in stats] == model  # pairs counted from the calls made
    contiguous = [rank_pairs(make_layout(L, world, True, "contiguous"), r) for r in range(world)]
    assert max(contiguous) > 2.5 * min(contiguous)  # what the zig-zag avoids


def test_plan_steps_of_the_zigzag_are_single_calls():
    lay = make_layout(64, 2, causal=True)  # rank 0: (0,16),(48,64); rank 1: (16,32),(32,48)
    assert [(c.q_slice, c.k_slice, c.kind) for c in plan(lay, 0, 0)] == [((0, 32), (0, 32), "causal")]
    assert [(c.q_slice, c.k_slice, c.kind) for c in plan(lay, 0, 1)] == [((16, 32), (0, 32), "full")]
    assert [(c.q_slice, c.k_slice, c.kind) for c in plan(lay, 1, 0)] == [((0, 32), (0, 16), "full")]


def test_ring_variant_is_unsupported_in_the_single_process_runner(cpu):
    from attnbench.run.plan import expand, make_sweep

    cases = expand([make_sweep(variants="ring", seq=[256])], cpu)
    by_backend = {c.backend: c for c in cases}
    for name in ("sdpa", "eager"):
        assert by_backend[name].status == "unsupported" and "--world-size" in by_backend[name].reason
    assert by_backend["triton"].status == "unavailable"  # no lse from the kernels here
    ready = expand([make_sweep(variants="ring", seq=[256], backends="sdpa", params={"world_size": 2})], cpu)
    assert [c.status for c in ready] == [None]
    with pytest.raises(RuntimeError, match="world-size"):
        ring_variant.RING.backend("sdpa").build(ready[0].problem, cpu)
    mixed = expand([make_sweep(variants="ring,mha", seq=[256], backends="sdpa")], cpu)
    moved = with_world_size(mixed, 4, cpu)
    assert moved[1] is mixed[1] and moved[0].status is None and moved[0].problem.param("world_size") == 4
    assert [is_distributed(c) for c in moved] == [True, False]


# ---------------------------------------------------------------- gloo ranks
def _check_rank(rank: int, world: int, init: str, queue) -> None:
    """Each rank runs the ring on every config and compares its shard with fp32 attention."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    worst, pairs = 0.0, []
    for L, causal, hq, hkv in CONFIGS:
        q, k, v = _inputs(L, hq, hkv)
        lay = make_layout(L, world, causal)
        idx = lay.positions(rank)
        st = RankStats()
        out = ring_attention(*(t[:, :, idx].contiguous() for t in (q, k, v)), lay, rank, "sdpa", st)
        ref = softmax_attention(q.double(), k.double(), v.double(), causal=causal)[:, :, idx]
        worst = max(worst, (out.double() - ref).abs().max().item())
        pairs.append((st.pairs, rank_pairs(lay, rank), st.bytes_sent))
    queue.put((rank, worst, pairs))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_gloo_ring_matches_exact_attention(world):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"tcp://127.0.0.1:{free_port()}"
    procs = [ctx.Process(target=_check_rank, args=(r, world, init, queue)) for r in range(world)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=120) for _ in range(world)]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * world
    for rank, worst, pairs in got:
        assert worst < 2e-6, (rank, worst)
        for measured, model, sent in pairs:
            assert measured == model and sent > 0


@pytest.mark.slow
def test_run_ring_case_gives_a_record_with_per_rank_statistics():
    p = Problem(batch=1, heads=2, kv_heads=2, seq_q=203, seq_k=203, head_dim=16, causal=True,
                params=(("layout", "zigzag"), ("world_size", 2)))
    policy = TimingPolicy(min_samples=3, min_time=0.01, max_time=0.05, warmup_time=0.01)
    rec = run_ring_case(p, 2, policy=policy, threads=1, timeout=120)
    assert rec["status"] == "ok", rec
    assert rec["error"]["rel_l2"] < 1e-6
    d = rec["distributed"]
    lengths = [make_layout(203, 2, True).length(r) for r in range(2)]  # 51+50 and 51+51
    assert d["world_size"] == 2 and d["per_rank"]["seq"] == lengths == [101, 102]
    assert d["per_rank"]["pairs"] == d["per_rank"]["pairs_model"]
    assert sum(d["per_rank"]["pairs"]) == p.attended_pairs()
    kv_bytes = 2 * 2 * 16 * 4  # K and V, Hkv=2, D=16, fp32: bytes per position
    assert d["per_rank"]["bytes_sent"] == [n * kv_bytes for n in lengths]  # one step: its own K/V
    assert d["load_imbalance"] < 0.05 and 0 <= d["comm_share"] <= 1
    assert d["baseline_ms"] > 0 and d["scaling_efficiency"] == pytest.approx(
        d["baseline_ms"] / (2 * rec["latency_ms"]["median"]))
    assert rec["peak_mem_bytes"] == max(d["per_rank"]["peak_mem_bytes"])
    assert len(rec["samples_ms"]) >= 3


@pytest.mark.slow
def test_a_failing_rank_becomes_an_error_record():
    p = Problem(batch=1, heads=2, kv_heads=2, seq_q=64, seq_k=64, head_dim=16)
    rec = run_ring_case(p, 2, block="no-such-block", baseline=False, timeout=120)
    assert rec["status"] == "error" and "rank" in rec["reason"] and "no-such-block" in rec["reason"]
    assert os.environ.get("RANK") is None  # not under torchrun here
