"""The plan's per-case prediction (run/forecast.py) follows what the worker does, and the ETA
corrects it by the measured/predicted ratio."""

from dataclasses import replace

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.measure.timing import TimingPolicy
from attnbench.run import forecast as F
from attnbench.run.plan import Case, decide_case
from attnbench.run.session import make_config
from attnbench.run.settings import RunSettings
from attnbench.variants import registry

CPU = torch.device("cpu")
# References as the header holds them; quiet (samples within 5 %) unless a test says otherwise.
REFS = {"gemm": {"float32": {"flops_per_s": 1e11, "spread": 0.05}}, "copy": {"bytes_per_s": 1e10}}


def _case(variant="mha", backend="sdpa", L=1024, mode="fwd", **kw) -> Case:
    raw = Problem(batch=1, heads=8, kv_heads=0, seq_q=L, seq_k=L, head_dim=64, dtype="float32", causal=False,
                  mode=mode, **kw)
    return decide_case(registry.get(variant), backend, raw, CPU)


def test_call_time_is_flops_at_half_the_gemm_rate_or_its_bytes_at_the_copy_rate():
    c = _case(L=1024)
    flops = 4 * 8 * 1024 * 1024 * 64
    assert F.call_seconds(c, REFS) == pytest.approx(flops / (0.5 * 1e11))
    slow_copy = {**REFS, "copy": {"bytes_per_s": 1e6}}
    assert F.call_seconds(c, slow_copy) > F.call_seconds(c, REFS) * 10  # memory bound now
    assert F.call_seconds(c, None) is None


def test_timing_loop_follows_the_stop_rule():
    pol = TimingPolicy(min_samples=10, min_time=0.2, max_time=2.0, target_rel_iqr=0.1)
    # 10 ms calls: warm-up 16 calls (0.16 s), then 10 samples of 1 call but at least 0.2 s
    assert F.measure_seconds(0.01, pol, "cpu") == pytest.approx(0.16 + 0.2)
    # a noisy machine: the loop runs to max_time plus the sample crossing it
    assert F.measure_seconds(0.01, pol, "cpu", to_max_time=True) == pytest.approx(0.16 + 2.01)
    # 1 s calls: one warm-up call, then 10 samples capped at max_time + one sample
    assert F.measure_seconds(1.0, pol, "cpu") == pytest.approx(1.0 + 3.0)
    # 0.1 ms calls are timed in blocks of 10 (1 ms per sample)
    assert F.measure_seconds(1e-4, pol, "cpu") == pytest.approx(0.05 + 0.2)


def test_noisy_reads_the_gemm_spread():
    pol = TimingPolicy(target_rel_iqr=0.1)
    assert not F.noisy(REFS, pol)
    assert F.noisy({**REFS, "gemm": {"float32": {"flops_per_s": 1e11, "spread": 0.7}}}, pol)
    assert not F.noisy(None, pol)


def test_plan_decisions_and_seconds():
    cases = [_case(backend="sdpa", L=512), _case(backend="triton", L=512), _case(backend="eager", L=512),
             _case(backend="flex", L=512), _case(backend="flex", L=1024)]
    cfg = make_config(CPU, RunSettings(time_budget=30.0))
    plan = F.forecast(cases, cfg, REFS)
    by = {(c.case.backend, c.case.problem.seq_q): c for c in plan.cases}
    tri = by[("triton", 512)]
    assert tri.status == "unavailable" and "CUDA" in tri.decision and tri.seconds == 0
    sdpa, eager = by[("sdpa", 512)], by[("eager", 512)]
    assert sdpa.decision == "run" and sdpa.seconds > 0 and sdpa.peak_bytes > 0
    # the fp64 oracle is paid by the first backend of a problem only
    after = F.forecast([eager.case, sdpa.case], cfg, REFS).cases[1]
    assert sdpa.seconds - after.seconds == pytest.approx(F.oracle_seconds(sdpa.case, REFS, 2**27))
    assert F.oracle_seconds(sdpa.case, REFS, 2**27) > 0 == F.oracle_seconds(sdpa.case, REFS, 2**10)
    # FlexAttention: the process's first compile, then the cheaper later ones
    assert by[("flex", 512)].seconds > F.COMPILE_FIRST_S > by[("flex", 1024)].seconds > F.COMPILE_NEXT_S
    assert plan.seconds == pytest.approx(sum(c.seconds for c in plan.cases))
    assert len(plan.to_run) == 4
    js = plan.as_json()
    assert js["predicted_seconds"] == pytest.approx(plan.seconds, abs=0.01)
    assert {c["decision"] for c in js["cases"]} >= {"run", tri.decision}
    assert {"variant", "backend", "seq_q", "seq_k", "mode", "predicted_peak_bytes"} <= set(js["cases"][0])


def test_a_case_too_slow_for_the_budget_is_skipped_and_costs_nothing():
    slow = {**REFS, "gemm": {"float32": {"flops_per_s": 1e6, "spread": 0.05}}}
    plan = F.forecast([_case(L=4096)], make_config(CPU, RunSettings(time_budget=1.0)), slow)
    (c,) = plan.cases
    assert c.status == "skipped" and "time budget" in c.decision and c.seconds == 0


def test_a_case_never_runs_past_budget_and_grace_and_rounds_multiply():
    slow = {**REFS, "gemm": {"float32": {"flops_per_s": 1e9, "spread": 0.05}}}
    cfg = replace(make_config(CPU, RunSettings(time_budget=1000.0)))
    one = F.forecast([_case(L=4096)], cfg, slow)
    three = F.forecast([_case(L=4096)], cfg, slow, rounds=3)
    assert three.seconds == pytest.approx(3 * one.seconds)
    tight_cfg = make_config(CPU, RunSettings(time_budget=0.5))
    tight = F.forecast([_case(L=2048)], tight_cfg, {**REFS, "copy": {"bytes_per_s": 1e9}})
    assert all(c.seconds <= 0.5 + 60 for c in tight.cases)


def test_eta_corrects_the_remaining_prediction_by_the_measured_ratio():
    cases = [_case(L=256), _case(L=512, backend="eager"), _case(L=1024, backend="eager")]
    plan = F.forecast(cases, make_config(CPU, RunSettings(time_budget=30.0)), REFS)
    eta = F.Eta(plan)
    total = plan.seconds
    assert eta.remaining() == pytest.approx(total)
    first = plan.cases[0]
    eta.done(first.case_id, 3 * first.seconds, whole_case=True)  # the first case took 3× its prediction
    assert eta.ratio == pytest.approx(3.0)
    assert eta.remaining() == pytest.approx(3 * (total - first.seconds))
    for c in plan.cases[1:]:
        eta.done(c.case_id, c.seconds, whole_case=True)
    assert eta.remaining() == 0


def test_fmt_duration_and_reason_groups():
    assert F.fmt_duration(4.24) == "4.2 s"
    assert F.fmt_duration(42) == "42 s"
    assert F.fmt_duration(190) == "3 min 10 s"
    assert F.fmt_duration(4320) == "1 h 12 min"
    assert F.reason_group("needs ~4.1 GiB, 3.0 GiB free") == F.reason_group("needs ~64.2 GiB, 20.5 GiB free")


def test_the_plan_uses_the_references_median_rates_where_recorded():
    refs = {"gemm": {"float32": {"flops_per_s": 1e11, "median_flops_per_s": 5e10, "spread": 0.05}},
            "copy": {"bytes_per_s": 1e10, "bytes": 2**26, "median_ms": 2 * 2**26 / 5e9 * 1e3}}
    typical = F.typical_rates(refs)
    assert typical["gemm"]["float32"]["flops_per_s"] == 5e10
    assert typical["copy"]["bytes_per_s"] == pytest.approx(5e9)
    c = _case(L=1024)
    assert F.call_seconds(c, refs) == pytest.approx(2 * F.call_seconds(c, REFS))


def test_every_backend_that_declares_compiles_pays_the_compile_in_the_plan():
    """The compile is declared on the backend (Backend.compiles), not inferred from its name:
    transformers' flex_attention (hf-flex) compiles like ours."""
    assert registry.get("mha").backend("hf-flex").compiles and registry.get("mha").backend("flex").compiles
    assert not registry.get("mha").backend("hf-sdpa").compiles
    cfg = make_config(CPU, RunSettings(time_budget=30.0))
    hf_flex, hf_sdpa = F.forecast([_case(backend="hf-flex", L=512)], cfg, REFS).cases[0], \
        F.forecast([_case(backend="hf-sdpa", L=512)], cfg, REFS).cases[0]
    assert hf_flex.decision == "run" and hf_flex.seconds - hf_sdpa.seconds > 0.9 * F.COMPILE_FIRST_S
