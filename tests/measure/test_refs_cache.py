"""The in-run references' cache (measure/refs_cache.py): used only for the same environment, fresh,
with every dtype a plan needs; and a dry run that finds them does not measure again."""

from __future__ import annotations

import json

import pytest

from attnbench.measure import refs_cache as C
from attnbench.run.plan import make_sweep
from attnbench.run.session import plan_sweep
from attnbench.run.settings import RunSettings

ENV = {"device": "cpu", "device_name": "Some CPU", "torch": "2.x", "triton": None, "cuda": None, "threads": 2}
REFS = {"gemm": {"float32": {"flops_per_s": 1e11, "spread": 0.05}}, "copy": {"bytes_per_s": 1e10}}
NOW = 1_000_000.0


def test_stored_references_come_back_for_the_same_environment_only():
    C.store(ENV, REFS, took_s=4.0, now=NOW)
    refs, took, age = C.load(ENV, ("float32",), now=NOW + 60)
    assert refs == REFS and took == pytest.approx(4.0) and age == pytest.approx(60)
    assert C.load({**ENV, "threads": 1}, ("float32",), now=NOW) is None  # another fingerprint
    assert C.load({**ENV, "torch": "2.y"}, ("float32",), now=NOW) is None
    assert C.load(ENV, ("float32", "float16"), now=NOW) is None  # a dtype never measured
    assert C.load(ENV, ("float32",), now=NOW + C.MAX_AGE_S + 1) is None  # stale


def test_dtypes_accumulate_and_a_broken_file_is_ignored():
    C.store(ENV, REFS, took_s=4.0, now=NOW)
    C.store(ENV, {"gemm": {"float16": {"flops_per_s": 2e11}}, "copy": REFS["copy"]}, took_s=2.0, now=NOW + 10)
    refs, _, age = C.load(ENV, ("float16", "float32"), now=NOW + 20)
    assert set(refs["gemm"]) == {"float16", "float32"} and age == pytest.approx(20)  # the oldest entry's
    C.cache_path(ENV).write_text("{not json")
    assert C.load(ENV, ("float32",), now=NOW) is None
    C.cache_path(ENV).write_text(json.dumps({"key": "another", "copy": {}, "gemm": {}}))
    assert C.load(ENV, ("float32",), now=NOW) is None


def test_a_run_start_up_is_what_the_next_plan_predicts():
    assert C.startup_seconds(ENV, ("float32",), 4.0, now=NOW) == pytest.approx(C.WORKER_START_S + 4.0)
    C.store(ENV, REFS, took_s=None, startup_s=11.0, now=NOW)  # a run: worker start + references
    assert C.startup_seconds(ENV, ("float32",), 4.0, now=NOW + 1) == pytest.approx(11.0)
    assert C.startup_seconds(ENV, ("float16", "float32"), 4.0, now=NOW + 1) == pytest.approx(C.WORKER_START_S + 4.0)
    _, took, _ = C.load(ENV, ("float32",), now=NOW + 1)
    assert took == pytest.approx(11.0 - C.WORKER_START_S)


def test_a_second_dry_run_reuses_the_references(monkeypatch):
    calls = []

    def fake_measure(device, dtypes=("float32",)):
        calls.append(tuple(dtypes))
        return {"gemm": {d: REFS["gemm"]["float32"] for d in dtypes}, "copy": REFS["copy"]}

    monkeypatch.setattr("attnbench.measure.refs.measure", fake_measure)
    sweeps = [make_sweep(variants="mha", backends="sdpa", seq="128")]
    settings = RunSettings(time_budget=5.0, device="cpu")
    first, spent = plan_sweep(sweeps, settings)
    second, spent_again = plan_sweep(sweeps, settings)
    assert calls == [("float32",)] and spent_again == 0.0
    assert "measured here" in first.startup.note and "cached" in second.startup.note
    assert [c.seconds for c in second.cases] == pytest.approx([c.seconds for c in first.cases])
    assert second.startup.seconds >= C.WORKER_START_S  # this process's age, the worker, the references
    plan_sweep([make_sweep(variants="mha", backends="sdpa", seq="128", dtype="float16")], settings)
    assert calls[-1] == ("float16",)  # another dtype: measured, not guessed
