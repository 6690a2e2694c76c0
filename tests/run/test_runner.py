"""The runner: real cases in a spawned worker give full `ok` records; injected faults (the
test-only `fault` backend of `mha`, see attnbench/variants/backends/fault.py) give error / oom /
timeout records with reasons, and the worker is restarted so later cases still run."""

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.core.results import validate_record
from attnbench.measure.failure import failure_fields
from attnbench.measure.timing import TimingPolicy
from attnbench.run import worker as runner
from attnbench.run.plan import Case
from attnbench.run.worker import RunConfig, Worker, base_record, run_cases, skip_reason

CPU = torch.device("cpu")
POLICY = TimingPolicy(min_samples=3, min_time=0.01, max_time=0.2, warmup_time=0.01)
CFG = RunConfig(device=CPU, time_budget=60.0, threads=1, policy=POLICY)


def mha(backend: str = "sdpa", L: int = 64, mode: str = "fwd", **params) -> Case:
    p = Problem(batch=1, heads=2, kv_heads=2, seq_q=L, seq_k=L, head_dim=32, mode=mode)
    return Case("mha", backend, p.with_params(**params) if params else p)


def run(cases, cfg=CFG, worker=None, refs=None) -> list[dict]:
    out: list[dict] = []
    run_cases(cases, cfg, worker, out.append, refs)
    return out


@pytest.fixture(scope="module")
def worker():
    w = Worker(CFG)
    yield w
    w.close()


def check_ok(rec: dict, case: Case) -> None:
    p = case.problem
    assert rec["status"] == "ok", rec["reason"]
    assert rec["reason"] is None
    validate_record({"type": "record", **rec}, "test", 1)
    lat = rec["latency_ms"]
    assert set(lat) == {"median", "mean", "min", "p10", "p90", "iqr", "n"}
    assert lat["n"] == len(rec["samples_ms"]) >= 1 and lat["median"] > 0 and lat["min"] <= lat["median"]
    assert rec["peak_mem_bytes"] >= 0 and rec["mem_source"] == "cpu-vmhwm"
    factor = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5, "decode": 1.0}[p.mode]
    assert rec["flops"] == factor * 4 * p.batch * p.heads * p.attended_pairs() * p.head_dim
    assert rec["bytes"] > 0 and rec["kv_cache_bytes"] == 2 * p.batch * p.kv_heads * p.seq_k * p.head_dim * 4
    assert rec["tflops"] > 0 and rec["gbps"] > 0
    assert rec["setup_ms"] >= 0 and rec["first_call_ms"] > 0 and rec["wall_s"] > 0
    assert rec["mem_model_bytes"] > 0 and rec["threads"] == 1 and rec["kernel"]
    assert rec["telemetry"] == {"available": False, "reason": "no CUDA device (CPU run)"}
    assert rec["roofline_frac"] is None  # no refs given
    assert (rec["variant"], rec["backend"], rec["seq_q"], rec["mode"]) == (case.variant, case.backend, p.seq_q, p.mode)


def test_real_cases_are_ok(worker):
    cases = [mha("sdpa"), mha("eager", mode="bwd"), mha("sdpa", mode="fwd+bwd"),
             Case("gqa", "sdpa", Problem(batch=1, heads=4, kv_heads=1, seq_q=1, seq_k=128, head_dim=32,
                                         mode="decode"))]
    recs = run(cases, worker=worker)
    for rec, case in zip(recs, cases):
        check_ok(rec, case)
    assert recs[0]["error"]["vs"] == "fp64 reference" and recs[0]["error"]["rel_l2"] < 1e-5
    assert "scaled_dot_product" in recs[0]["kernel"]
    assert recs[1]["error"] is None and recs[2]["error"] is None  # error is measured on forward modes
    assert recs[3]["error"]["max_abs"] < 1e-5
    assert len({r["case_id"] for r in recs}) == 4


def test_faults_become_records_and_the_sweep_goes_on(worker, monkeypatch):
    import attnbench.run.worker as runner

    monkeypatch.setattr(runner, "oom_kill_count", lambda: 0)  # the kernel's OOM killer stays out of it
    cases = [mha("fault", fault="raise"), mha("fault", fault="oom"), mha("fault", fault="segv"),
             mha("fault", fault="kill"), mha("sdpa", L=32)]
    recs = run(cases, worker=worker)
    raised, oom, segv, kill, after = recs
    assert raised["status"] == "error" and "RuntimeError: injected failure" in raised["reason"]
    assert "fault.py" in raised["reason"]  # where it was raised
    assert oom["status"] == "oom" and "allocate" in oom["reason"]
    assert segv["status"] == "error" and "SIGSEGV" in segv["reason"]
    assert kill["status"] == "killed" and "SIGKILL" in kill["reason"]  # from outside, not an OOM
    for r in (raised, oom, segv, kill):
        assert r["latency_ms"] is None and r["peak_mem_bytes"] is None
        validate_record({"type": "record", **r}, "test", 1)
    check_ok(after, cases[-1])  # the worker was restarted


def test_timeout_kills_and_restarts_the_worker(worker, monkeypatch):
    check_ok(run([mha("sdpa", L=16)], worker=worker)[0], mha("sdpa", L=16))  # a warm worker
    pid = worker.proc.pid
    monkeypatch.setattr(runner, "STARTUP_GRACE_S", 1.0)
    (rec,) = run([mha("fault", fault="sleep")], cfg=RunConfig(device=CPU, time_budget=2.0, policy=POLICY),
                 worker=worker)
    assert rec["status"] == "timeout"
    assert "no result within 3 s" in rec["reason"] and "restarted" in rec["reason"]
    assert worker.proc is None  # killed
    monkeypatch.undo()
    (after,) = run([mha("sdpa", L=32)], worker=worker)
    check_ok(after, mha("sdpa", L=32))
    assert worker.proc.pid != pid


def test_decided_cases_never_reach_the_worker():
    case = Case("mha", "sdpa", Problem(heads=8, kv_heads=2), "unsupported", "mha needs kv_heads == heads")
    (rec,) = run([case], worker=None)  # no worker: it would raise if used
    assert rec["status"] == "unsupported" and rec["reason"] == "mha needs kv_heads == heads"
    assert rec["mem_model_bytes"] is None and rec["latency_ms"] is None
    validate_record({"type": "record", **rec}, "test", 1)


def test_cases_predicted_too_slow_are_skipped():
    refs = {"gemm": {"float32": {"n": 8, "median_ms": 1.0, "flops_per_s": 1e3}},
            "copy": {"bytes": 8, "median_ms": 1.0, "bytes_per_s": 1e9}}
    (rec,) = run([mha("sdpa", L=1024)], worker=None, refs=refs)
    assert rec["status"] == "skipped" and "--time-budget" in rec["reason"]
    assert skip_reason(mha("sdpa", L=64), CFG, None) is None


def test_cases_predicted_too_large_are_skipped():
    huge = Case("mha", "eager", Problem(batch=64, heads=64, kv_heads=64, seq_q=1 << 20, seq_k=1 << 20, head_dim=64))
    (rec,) = run([huge], worker=None)
    assert rec["status"] == "skipped" and "GiB" in rec["reason"]


def test_base_record_carries_the_problem():
    case = mha("sdpa", L=48).problem
    rec = base_record(Case("mha", "sdpa", case), CPU)
    assert (rec["seq_q"], rec["seq_k"], rec["heads"], rec["kv_heads"], rec["params"]) == (48, 48, 2, 2, {})
    assert rec["device"] == "cpu" and rec["status"] is None


def test_failure_fields():
    assert failure_fields(MemoryError())["status"] == "oom"
    assert failure_fields(RuntimeError("CUDA out of memory. Tried"))["status"] == "oom"
    err = failure_fields(ValueError("bad\n  shape"))  # the first line, whole (measure/failure.one_line)
    assert err == {"status": "error", "reason": "ValueError: bad"}


def test_a_reference_that_does_not_fit_does_not_turn_the_case_into_oom():
    """sdpa at L=2048 needs a few MiB; the dense reference needs 3 × 128 MiB of fp32 scores.
    With 256 MiB allowed, sdpa runs (a bwd case of this shape, which computes no reference, is ok
    with an 18 MiB peak) but the forward case is recorded as oom."""
    cfg = RunConfig(device=CPU, time_budget=60.0, threads=1, policy=POLICY, mem_limit=256 * 2**20)
    w = Worker(cfg)
    try:
        p = Problem(batch=1, heads=8, kv_heads=8, seq_q=2048, seq_k=2048, head_dim=64)
        (rec,) = run([Case("mha", "sdpa", p)], cfg=cfg, worker=w)
    finally:
        w.close()
    assert rec["status"] == "ok", rec["reason"]
    assert "reason" in rec["error"]


SLOW_START = '''
import time

from attnbench.api import Backend

time.sleep(4)  # a worker that takes this long to start (as torch's import does on a loaded machine)
BACKENDS = {"mha": [Backend("slow-start", lambda problem, device: (lambda q, k, v: q), "returns q")]}
'''


def test_a_case_clock_starts_when_the_worker_is_ready_not_while_it_starts(tmp_path):
    """The worker's start (spawn, imports, here a user file that sleeps 4 s) is waited for apart
    from the case's timeout: a 3 s timeout does not expire while the worker is still starting."""
    path = tmp_path / "slow_start.py"
    path.write_text(SLOW_START)
    w = Worker(RunConfig(device=CPU, time_budget=2.0, threads=1, policy=POLICY, backend_files=(str(path),)))
    try:
        rec = w.run(mha("sdpa", L=16), timeout=3.0)
        assert rec.get("status", "ok") == "ok" and "latency_ms" in rec, rec
        assert w.ready
    finally:
        w.close()
