"""Contention is judged from the load average against the usable cores and from the in-run GEMM
reference's waits, both injected here (the machine's real load never decides a test); a contended
record is flagged, kept through --rounds, accepted by the reader, and explained once after a run."""

from __future__ import annotations

from attnbench.core.results import FLAGS
from attnbench.measure.contention import GEMM_WAIT, advice, judge
from attnbench.run.rounds import merge_rounds

QUIET_GEMM = {"best_ms": 8.0, "median_ms": 8.4}
WAITING_GEMM = {"best_ms": 7.8, "median_ms": 20.3}  # the loaded 2-core machine's reference, as measured


def test_a_quiet_machine_is_not_contended():
    assert judge("cpu", 0.3, 2, 2, QUIET_GEMM).contended is False
    assert judge("cpu", 2.4, 2, 2, QUIET_GEMM).contended is False  # the run's own two threads: within slack


def test_load_beyond_the_cores_is_contended_and_says_its_figures():
    c = judge("cpu", 15.9, 2, 2, QUIET_GEMM)
    assert c.contended and c.why == "load average 15.9 on 2 cores (2 threads in this run)"
    assert judge("cpu", 15.9, 32, 2, QUIET_GEMM).contended is False  # the same load on a big machine


def test_a_waiting_gemm_reference_is_contended_without_load():
    c = judge("cpu", None, 2, 2, WAITING_GEMM)
    assert WAITING_GEMM["median_ms"] > GEMM_WAIT * WAITING_GEMM["best_ms"]
    assert c.contended and "median call took 2.6× its best" in c.why
    assert judge("cpu", None, 2, 2, None).contended is False  # no reference, no load: nothing to judge


def test_a_gpu_run_is_not_judged():
    assert judge("cuda", 40.0, 2, 2, WAITING_GEMM).contended is False


def test_contended_is_a_documented_flag():
    from pathlib import Path

    assert "contended" in FLAGS
    assert "`contended`" in (Path(__file__).parents[2] / "docs" / "results-schema.md").read_text()


def _rec(flags, why=None, threads=2):
    return {"status": "ok", "flags": flags, "threads": threads, "timing": {"contention": why},
            "samples_ms": [1.0, 1.1, 1.2], "latency_ms": {"median": 1.1, "iqr": 0.1, "n": 3},
            "peak_mem_bytes": 1, "wall_s": 1.0}


def test_advice_is_one_line_naming_the_fix():
    recs = [_rec(["contended"], "load average 15.9 on 2 cores (2 threads in this run)"), _rec([])]
    line = advice(recs)
    assert line.startswith("contended: 1 of 2 cases ran on a contended CPU (load average 15.9")
    assert "--threads 1" in line and "\n" not in line
    assert "--threads 1" not in advice([_rec(["contended"], threads=1)]) and "quiet machine" in advice(
        [_rec(["contended"], threads=1)])
    assert advice([_rec([])]) is None


def test_rounds_keep_a_later_rounds_contention():
    later = _rec(["contended"], "the in-run GEMM reference's median call took 2.6× its best")
    merged = merge_rounds([_rec([]), later], 2)
    assert "contended" in merged["flags"] and "2.6×" in merged["timing"]["contention"]
