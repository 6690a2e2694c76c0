"""Interrupted and resumed sweeps, fault injection mixed with real cases, the memory frontier."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnbench.core import results
from attnbench.core.problem import Problem
from attnbench.run.frontier import find_frontier
from attnbench.run.plan import expand, make_sweep
from attnbench.run.worker import RunConfig, Worker

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "ATTNBENCH_TEST_BACKENDS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "attnbench", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_records(path: Path, n: int, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and path.read_text().count('"type": "record"') >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} did not reach {n} records")


SWEEP = ["run", "--variants", "mha", "--backends", "sdpa,eager", "--seq", "64,128,256,512", "--time-budget", "3"]


def test_kill9_then_resume_gives_one_record_per_case(tmp_path):
    out = tmp_path / "r.jsonl"
    p = _cli(*SWEEP, "--out", str(out))
    _wait_for_records(out, 3)
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    with open(out, "a") as f:  # a writer killed mid-line leaves a truncated last line
        f.write('{"type": "record", "case_id": "trunc')
    with pytest.warns(UserWarning, match="truncated"):
        _, partial = results.read(out)
    assert 3 <= len(partial) < 8
    done = _cli(*SWEEP, "--out", str(out), "--resume")
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    _, recs = results.read(out)
    ids = [r["case_id"] for r in recs]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert {r["status"] for r in recs} == {"ok"}


def test_ctrl_c_stops_after_the_current_case_and_exits_130(tmp_path):
    out = tmp_path / "r.jsonl"
    p = _cli(*SWEEP, "--out", str(out))
    _wait_for_records(out, 1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    _, recs = results.read(out)
    assert 1 <= len(recs) < 8 and all(r["status"] == "ok" for r in recs)


def test_existing_out_is_never_overwritten_silently(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("precious\n")
    p = _cli(*SWEEP, "--out", str(out))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "already exists" in err and "Traceback" not in err
    assert out.read_text() == "precious\n"


def test_faults_mixed_with_real_cases(tmp_path, monkeypatch):
    import attnbench.run.worker as runner

    # a short grace keeps the `sleep` case short, yet covers a worker's start (import torch: up to
    # ~15 s seen on a loaded 2-core machine; 8 s timed out every case there)
    monkeypatch.setattr(runner, "STARTUP_GRACE_S", 25.0)
    monkeypatch.setattr(runner, "oom_kill_count", lambda: 0)  # the kernel's OOM killer stays out of it
    cfg = RunConfig(device=torch.device("cpu"), time_budget=2.0)
    cases = []
    for fault in ("none", "raise", "oom", "segv", "kill", "sleep", "none"):
        sw = make_sweep(variants="mha", backends="fault", seq=[64], params={"fault": fault})
        cases += expand([sw], cfg.device)
    cases += expand([make_sweep(variants="mha", backends="sdpa", seq=[64, 128])], cfg.device)
    out = tmp_path / "faults.jsonl"
    worker = Worker(cfg)
    recs = []
    try:
        with results.Writer(out, results.make_header(["test"], {}, None)) as w:
            runner.run_cases(cases, cfg, worker, lambda r: (w.write(r), recs.append(r)))
    finally:
        worker.close()
    by_fault = [(r["params"].get("fault"), r["status"], r["reason"]) for r in recs]
    statuses = [s for _, s, _ in by_fault]
    assert statuses == ["ok", "error", "oom", "error", "killed", "timeout", "ok", "ok", "ok"], by_fault
    assert "injected failure" in by_fault[1][2]
    assert "SIGSEGV" in by_fault[3][2]
    assert "SIGKILL" in by_fault[4][2]
    assert "time budget" in by_fault[5][2]
    _, back = results.read(out)  # the file validates
    assert len(back) == len(cases)


def test_frontier_finds_the_memory_limit_of_eager_attention():
    cfg = RunConfig(device=torch.device("cpu"), time_budget=20.0, mem_limit=256 << 20)
    worker = Worker(cfg)
    try:
        base = Problem(batch=1, heads=4, kv_heads=0, head_dim=32)
        f = find_frontier("mha", "eager", base, cfg, worker, 256 << 20, start=256, max_seq=8192,
                          granularity=128)
    finally:
        worker.close()
    # scores + probabilities: 2 x 4 heads x L^2 x 4 B = 32 L^2 bytes, so L ~ 2.9k at 256 MiB
    assert f.limit == "memory", f
    assert 1024 <= f.largest_ok < f.first_failed <= 4096, f
    assert f.first_failed - f.largest_ok <= max(128, f.largest_ok // 32) + 128
