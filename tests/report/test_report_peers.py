"""The "Against the peers" targets on synthetic records: every figure a ratio of the records'
own numbers, so each expected value below is computed by hand."""

import pytest

from attnbench.report.peers import (
    best_vs_peer,
    decode_targets,
    markdown,
    noncausal_performer_targets,
    sliding_window_targets,
)
from conftest import with_catalogue

REFS = {"copy": {"bytes_per_s": 1e10}, "gemm": {"float32": {"flops_per_s": 1e11}}}


def dec(backend, hkv, ms, kv_bytes, flops=5e8):
    return {"status": "ok", "variant": "mqa" if hkv == 1 else ("mha" if hkv == 32 else "gqa"), "backend": backend,
            "mode": "decode", "heads": 32, "kv_heads": hkv, "dtype": "float32", "latency_ms": {"median": ms},
            "kv_cache_bytes": kv_bytes, "flops": flops, "seq_q": 1, "causal": False, "params": {}}


def test_decode_targets_ratios_and_the_unreachable_note():
    # bytes bound = kv / 1e10 s; FLOP bound = 5e8 / 1e11 s = 5 ms for every case
    recs = [dec("sdpa", 32, 90.0, 1e9), dec("grouped", 32, 150.0, 1e9),  # bytes bound 100 ms: 1.5×
            dec("sdpa", 8, 90.0, 2.5e8), dec("grouped", 8, 30.0, 2.5e8),  # 25 ms: 1.2×; vs SDPA 3.0×
            dec("sdpa", 1, 60.0, 1e7), dec("grouped", 1, 12.0, 1e7)]  # 1 ms, FLOPs 5 ms: 12× / 2.4×
    t = {x.what: x for x in decode_targets(recs, REFS)}
    vs_sdpa = t["decode: grouped vs SDPA enable_gqa (Hkv ≤ 8)"]
    assert vs_sdpa.measured == "Hkv=8: 3.0×, Hkv=1: 5.0×" and vs_sdpa.passed
    ratio = t["decode: MHA/MQA latency (grouped)"]
    assert ratio.measured == "12.5×" and ratio.note == "the roofline bounds of the two cases give 20.0× here"  # 100 / 5
    bytes_row = t["decode: grouped latency ÷ (KV bytes ÷ in-run bandwidth)"]
    assert bytes_row.measured == "worst 12.0× (Hkv=1)" and bytes_row.passed is False
    assert bytes_row.note.startswith("Hkv=1: unreachable here") and "5.0×" in bytes_row.note  # 5 ms / 1 ms
    assert "Hkv=8" not in bytes_row.note  # within 3× (and bandwidth-bound)
    roof = t["decode: grouped latency ÷ max(KV bytes ÷ bandwidth, FLOPs ÷ GEMM rate)"]
    assert roof.info and roof.passed is None and roof.mark == "info"
    assert roof.measured == "Hkv=32: 1.5× (bytes), Hkv=8: 1.2× (bytes), Hkv=1: 2.4× (FLOPs)"
    assert markdown([roof, bytes_row]).splitlines()[2:] == [
        f"| 1 | {roof.what} | context | {roof.measured} | info — {roof.note} |",
        f"| 1 | {bytes_row.what} | ≤ 3× | {bytes_row.measured} | **miss** — {bytes_row.note} |"]


def test_decode_compute_bound_miss_says_what_share_of_the_gemm_rate_it_needs():
    recs = [dec("grouped", 1, 12.0, 2e7)]  # bytes 2 ms, FLOPs 5 ms: 2.5× of the bytes bound; latency 6×
    bytes_row, _ = decode_targets(recs, REFS)  # no SDPA or MHA case: the bytes row and the context row
    assert bytes_row.passed is False
    assert bytes_row.note == ("Hkv=1: compute-bound here, its FLOPs at the in-run GEMM rate take 2.5× the bytes "
                              "bound (≤ 3× needs ≥ 83 % of that rate)")


def perf(backend, L, ms, err, eps):
    return {"status": "ok", "variant": "performer", "backend": backend, "mode": "fwd", "causal": False,
            "seq_q": L, "latency_ms": {"median": ms}, "params": {"eps": eps, "nb_features": 256},
            "error": {"rel_l2": err, "full_rel_l2": err}}


def test_performer_compared_only_at_the_peers_parameters():
    recs = [perf("peer:performer-pytorch", 1024, 20.0, 0.80, 1e-4), perf("chunked", 1024, 8.0, 0.80, 1e-4),
            perf("eager", 1024, 10.0, 0.80, 1e-4),
            perf("chunked", 1024, 4.0, 3.7, 0.0)]  # faster, but another estimator: context only
    ((L, x, best, peer),) = best_vs_peer(recs, "peer:performer-pytorch")
    assert (L, best["backend"], best["params"]["eps"]) == (1024, "chunked", 1e-4) and x == pytest.approx(2.5)
    speed, err, ctx = noncausal_performer_targets(recs)
    assert speed.passed and err.passed and "eps = 0.0001" in err.note
    assert ctx.info and ctx.measured == "chunked eps=0 1k: 3.700"


def test_sliding_window_backend_parameters_do_not_split_the_comparison():
    """flex's block_size is how, not what: a flex case with it set still compares with the peer
    (which has only the variant's window)."""
    def sw(backend, ms, **extra):
        return {"status": "ok", "variant": "sliding_window", "backend": backend, "mode": "fwd", "causal": True,
                "seq_q": 4096, "latency_ms": {"median": ms}, "params": {"window": 256, **extra}}

    recs = [sw("peer:local-attention", 120.0), sw("flex", 40.0, block_size=64), sw("chunked", 60.0),
            sw("chunked", 10.0, window=128)]  # another window: another computation, never compared
    (target,) = sliding_window_targets(with_catalogue(recs))
    assert target.measured == "4k: 3.0× (flex)" and target.passed
