"""The report's "For your model" section and the KV-cache lines (report/formodel.py)."""

from __future__ import annotations

from attnbench.core.models import kv_bytes_per_seq, kv_bytes_per_token, preset
from attnbench.core.results import RECORD_FIELDS
from attnbench.gate.recommend import recommend
from attnbench.report.formodel import context_lines, kv_rows, model_section


def rec(backend, L, ms, status="ok", model="llama-3-8b"):
    spec = preset(model)
    r = {f: None for f in RECORD_FIELDS}
    r.update(case_id=f"{backend}-{L}", variant="gqa", backend=backend, device="cpu", dtype="bfloat16", mode="decode",
             batch=1, heads=32, kv_heads=8, seq_q=1, seq_k=L, head_dim=128, causal=True, params={}, status=status,
             samples_ms=[ms] * 5 if status == "ok" else None,
             latency_ms={"median": ms, "iqr": 0.0, "n": 5} if status == "ok" else None,
             error={"rel_l2": 3e-3, "max_abs": 1e-2} if status == "ok" else None, model=model, layers=spec.layers,
             kv_bytes_per_seq=kv_bytes_per_seq(spec, L), kv_bytes_per_token=kv_bytes_per_token(spec))
    return r


def test_section_has_recommendation_kv_and_frontier():
    recs = [rec("sdpa", L, 1.0 * L / 1024) for L in (1024, 2048)] + [rec("eager", L, 3.0 * L / 1024) for L in
                                                                       (1024, 2048)] + [rec("eager", 4096, 0, "oom")]
    sec = model_section(recs, lambda rs: recommend(rs))
    titles = [t.title for t in sec.tables]
    assert titles == ["recommended backend per length", "KV cache vs context",
                      "frontier: the longest length each backend ran"]
    best = {r["seq"]: r["backend"] for r in sec.tables[0].rows}
    assert best == {"1k": "sdpa", "2k": "sdpa", "4k": "-"}  # 4k: nothing ran (1 oom)
    assert [r["kv_seq"] for r in sec.tables[1].rows] == ["128.0 MiB", "256.0 MiB", "512.0 MiB"]  # 128 KiB/token
    eager = next(r for r in sec.tables[2].rows if r["backend"] == "eager")
    assert (eager["L"], eager["next"]) == ("2k", "4k: oom")
    assert any("655,360 tokens" in t for t in sec.text)  # 80 GiB / 128 KiB


def test_no_model_no_section_and_sliding_window_cache_stops_growing():
    assert model_section([{**rec("sdpa", 1024, 1.0), "model": None}], None) is None
    [line] = context_lines([rec("sdpa", 8192, 1.0, model="mistral-7b")], 80 * 2**30)
    assert "stops growing" in line
    assert len(kv_rows([rec("sdpa", 1024, 1.0), rec("eager", 1024, 2.0)])) == 1  # one row per model and length
