"""The α–β scaling model's arithmetic, its feasibility logic and the calibration fit (no torch)."""

from __future__ import annotations

import math

import pytest

from attnbench.core.cp import Degrees
from attnbench.distributed.calibrate import fit_alpha_beta
from attnbench.distributed.cpmodel import (
    GIB,
    LINKS,
    Link,
    Setting,
    Shape,
    alltoall_seconds,
    best,
    plan,
    predict,
    ring_seconds,
    single_device_seconds,
)

LINK = Link("test", 1e9, 1e-5)  # 1 GB/s, 10 µs
SHAPE = Shape(batch=1, heads=8, kv_heads=2, head_dim=64, itemsize=2, causal=False, layers=1)


def _setting(**kw) -> Setting:
    return Setting(**({"rate": 1e12, "intra": LINK, "inter": LINK, "memory": 1e15} | kw))


def test_alpha_beta_arithmetic_by_hand():
    assert alltoall_seconds(LINK, 4e6, 4) == pytest.approx(3 * (1e-5 + 1e6 / 1e9))
    # 3 steps of compute 1 ms; K and V of 2 MB each step → 2·(10 µs + 1 ms) = 2.02 ms per send
    t, exposed = ring_seconds(1e-3, 3, 2e6, LINK, overlap=1.0)
    assert exposed == pytest.approx(2 * (2.02e-3 - 1e-3)) and t == pytest.approx(3e-3 + exposed)
    t0, e0 = ring_seconds(1e-3, 3, 2e6, LINK, overlap=0.0)  # nothing hidden
    assert e0 == pytest.approx(2 * 2.02e-3)
    assert single_device_seconds(SHAPE, 1000, 1e12) == pytest.approx(4 * 8 * 64 * 1000**2 / 1e12)


def test_predicted_ulysses_latency_by_hand():
    st = _setting()
    p = predict(SHAPE, 4096, "ulysses", Degrees(4, 1), st)
    t1 = single_device_seconds(SHAPE, 4096, 1e12)
    per_head = 1024 * 64 * 2  # a rank's piece, one head, bf16
    a2a = sum(alltoall_seconds(LINK, per_head * h, 4) for h in (8, 4, 4, 8))  # Hkv=2 replicated to 4
    assert p.compute == pytest.approx(t1 / 4) and p.latency == pytest.approx(t1 / 4 + a2a)
    assert p.efficiency == pytest.approx(t1 / (4 * p.latency)) and p.comm_share == pytest.approx(a2a / p.latency)


def test_overlap_hides_the_ring_when_compute_is_long():
    slow = _setting(rate=1e9)  # compute dominates
    assert predict(SHAPE, 8192, "ring", Degrees(1, 8), slow).comm_exposed == 0.0
    fast = _setting(rate=1e16)
    assert predict(SHAPE, 8192, "ring", Degrees(1, 8), fast).comm_share > 0.5


def test_feasibility_reasons():
    llama = Shape(1, 64, 8, 128, 2, True, 80)
    st = _setting(memory=80 * GIB)
    preds = {p.label: p for p in plan(llama, 1 << 20, 128, st)}
    assert "query heads" in preds["ulysses"].reason  # 128 does not divide 64 heads
    assert preds["ring"].reason is None
    tight = {p.label: p for p in plan(llama, 4 << 20, 8, st)}  # 4M tokens of KV cache on 8 GPUs
    assert all("GiB per GPU" in p.reason for p in tight.values()) and best(list(tight.values())) is None


def test_memory_counts_the_kv_cache_of_every_layer():
    one = predict(Shape(1, 8, 8, 64, 2, True, 1), 1 << 16, "ring", Degrees(1, 8), _setting())
    ten = predict(Shape(1, 8, 8, 64, 2, True, 11), 1 << 16, "ring", Degrees(1, 8), _setting())
    cache_layer = 2 * 8 * 64 * 2 * (1 << 16) / 8
    assert ten.memory - one.memory == pytest.approx(10 * cache_layer)


def test_link_presets_are_positive_and_cited():
    assert all(x.bandwidth > 0 and x.latency > 0 and x.source for x in LINKS.values())
    assert LINKS["nvlink5"].bandwidth == 2 * LINKS["nvlink4"].bandwidth


def test_alpha_beta_fit_recovers_known_values():
    alpha, beta = 2e-5, 3e9
    recs = []
    for u, nbytes in ((2, 1e6), (4, 3e6), (8, 2e7), (4, 5e5)):
        ms = (4 * (u - 1) * alpha + nbytes / beta) * 1e3
        recs.append({"status": "ok", "distributed": {
            "strategy": "ulysses", "ulysses_degree": u, "ring_degree": 1, "baseline_ms": 1.0,
            "per_rank": {"a2a_ms": [ms, ms], "a2a_bytes": [nbytes, nbytes]}}})
    link = fit_alpha_beta(recs)
    assert math.isclose(link.latency, alpha, rel_tol=1e-6) and math.isclose(link.bandwidth, beta, rel_tol=1e-6)
    with pytest.raises(ValueError, match="all-to-all"):
        fit_alpha_beta(recs[:0])
