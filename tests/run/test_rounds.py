"""Rounds: cases measured several times, interleaved, samples pooled per case."""

import pytest
import torch

from attnbench.core import results
from attnbench.core.errors import UsageError
from attnbench.measure.timing import Stats
from attnbench.run.plan import make_sweep
from attnbench.run.rounds import merge_rounds, round_order
from attnbench.run.session import Scope, run_sweep
from attnbench.run.settings import RunSettings

CPU = torch.device("cpu")


def _ok(samples, peak, wall=1.0):
    st = Stats.of(samples)
    return {"status": "ok", "reason": None, "samples_ms": list(samples), "latency_ms": st.__dict__,
            "timing": {"calls_per_sample": 4, "stopped_by": "spread"}, "tflops": 2.0, "gbps": 8.0,
            "roofline_frac": 0.5, "peak_mem_bytes": peak, "wall_s": wall}


def test_round_order_alternates_direction():
    assert round_order(range(4), 0) == [0, 1, 2, 3]
    assert round_order(range(4), 1) == [3, 2, 1, 0]
    assert round_order(range(4), 2) == [0, 1, 2, 3]


def test_merge_pools_samples_and_rescales_rates():
    a, b = _ok([1.0, 1.0, 1.0], 100), _ok([3.0, 3.0, 3.0, 3.0], 120, wall=2.0)
    m = merge_rounds([a, b], 2)
    assert m["samples_ms"] == [1.0] * 3 + [3.0] * 4 and m["latency_ms"]["median"] == 3.0
    assert m["latency_ms"]["n"] == 7
    assert m["timing"] == {"calls_per_sample": 4, "stopped_by": "spread", "rounds": 2, "round_medians_ms": [1.0, 3.0]}
    assert m["tflops"] == pytest.approx(2.0 / 3) and m["gbps"] == pytest.approx(8.0 / 3)
    assert m["roofline_frac"] == pytest.approx(0.5 / 3)
    assert m["peak_mem_bytes"] == 120 and m["wall_s"] == 3.0
    assert merge_rounds([a], 1) is a


def test_merge_keeps_the_first_failed_round_with_its_number():
    bad = {"status": "timeout", "reason": "over the time budget"}
    m = merge_rounds([_ok([1.0], 1), bad], 3)
    assert m["status"] == "timeout" and m["reason"] == "round 2 of 3: over the time budget"
    assert merge_rounds([bad], 1) is bad  # one round: the record as it is


def test_run_with_rounds_writes_one_pooled_record_per_case(tmp_path):
    out = tmp_path / "r.jsonl"
    sweeps = [make_sweep(variants="mha", backends="sdpa,eager", seq="64", heads=2),
              make_sweep(variants="mha", backends="fault", seq="64", heads=2, params={"fault": "raise"}),
              make_sweep(variants="mha", backends="sdpa", seq="64", heads=4, kv_heads=2)]  # unsupported
    records, interrupted = run_sweep(sweeps, RunSettings(time_budget=2.0, threads=1, rounds=3, device="cpu"), out)
    assert not interrupted
    header, back = results.read(out)  # the file validates
    assert header["settings"] == {"time_budget": 2.0, "sample_time": None, "reference_limit": None, "rounds": 3,
                                  "inputs": "randn", "threads": 1, "device": "cpu",
                                  "keep_throttled": False, "cuda_graph": False}
    assert [r["case_id"] for r in back] == [r["case_id"] for r in records] and len(back) == 4
    by = {(r["backend"], r["heads"], r["kv_heads"]): r for r in back}
    for backend in ("sdpa", "eager"):
        r = by[(backend, 2, 2)]
        assert r["status"] == "ok" and r["timing"]["rounds"] == 3
        assert len(r["timing"]["round_medians_ms"]) == 3
        assert len(r["samples_ms"]) == r["latency_ms"]["n"] >= 3 * 5
    fault = by[("fault", 2, 2)]
    assert fault["status"] == "error" and fault["reason"].startswith("round 1 of 3: ")
    unsupported = by[("sdpa", 4, 2)]
    assert unsupported["status"] == "unsupported" and unsupported["reason"].startswith("round 1 of 3: ")


def test_rounds_do_not_combine_with_ray(tmp_path):
    with pytest.raises(UsageError, match="--rounds"):
        run_sweep([make_sweep(seq="64")], RunSettings(time_budget=1.0, threads=1, rounds=2, device="cpu"),
                  tmp_path / "r.jsonl", scope=Scope(executor="ray"))



def test_pooled_rounds_leave_out_each_rounds_throttled_samples():
    from attnbench.run.rounds import merge_rounds

    def rnd(samples, throttled):
        return {"status": "ok", "samples_ms": samples, "latency_ms": {"median": 1.0}, "flags": [], "wall_s": 1.0,
                "tflops": 1.0, "gbps": None, "roofline_frac": None, "peak_mem_bytes": 1,
                "clocks": {"available": True, "throttled_samples": throttled, "excluded": len(throttled),
                           "excluded_frac": len(throttled) / len(samples), "sm_clock_mhz": None}}

    merged = merge_rounds([rnd([1.0, 9.0, 1.0], [1]), rnd([1.0, 1.0, 9.0, 9.0], [2, 3])], 2)
    assert merged["latency_ms"]["n"] == 4 and merged["latency_ms"]["median"] == 1.0
    assert merged["samples_ms"] == [1.0, 9.0, 1.0, 1.0, 1.0, 9.0, 9.0]
    assert merged["clocks"]["throttled_samples"] == [1, 5, 6] and merged["clocks"]["excluded"] == 3
