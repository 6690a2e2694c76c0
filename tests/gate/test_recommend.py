"""`attnbench recommend` on synthetic records: winner, tie, error and memory budgets, crossover, JSON."""

from __future__ import annotations

import json

import numpy as np

import attnbench
from attnbench.cli import main
from attnbench.core.results import RECORD_FIELDS, make_header
from attnbench.core.tolerance import tolerance
from attnbench.gate.recommend import crossovers, recommend

ENV = {"attnbench": "0.1.0", "device": "cpu", "device_name": "x", "torch": "2", "triton": None, "cuda": None,
       "threads": 2}


def rec(backend, L, ms, *, spread=0.02, n=30, err=1e-7, peak=2**20, variant="gqa", seed=0, dtype="float32", **extra):
    """An ok record whose n samples are ms × (1 + N(0, spread)) (seeded)."""
    samples = list(ms * (1 + spread * np.random.default_rng([seed, L, len(backend)]).standard_normal(n)))
    r = {f: None for f in RECORD_FIELDS}
    r.update(type="record", case_id=f"{variant}-{backend}-{L}-{seed}", variant=variant, backend=backend, device="cpu",
             dtype=dtype, mode="fwd", batch=1, heads=8, kv_heads=2, seq_q=L, seq_k=L, head_dim=64, causal=True,
             params={}, status="ok", samples_ms=samples,
             latency_ms={"median": float(np.median(samples)), "iqr": 0.0, "n": n},
             peak_mem_bytes=peak, error={"vs": "fp64 reference", "rel_l2": err, "max_abs": err}, threads=2)
    return r | extra


def test_a_clear_winner_has_a_margin_whose_interval_excludes_one():
    [p] = recommend([rec("sdpa", 1024, 1.0), rec("eager", 1024, 2.0)])
    assert (p.backend, p.runner_up, p.tie) == ("sdpa", "eager", False)
    assert 1.9 < p.margin < 2.1 and 1 < p.margin_ci[0] <= p.margin <= p.margin_ci[1]


def test_two_backends_within_the_noise_are_a_tie():
    [p] = recommend([rec("sdpa", 1024, 1.0, spread=0.05, seed=1), rec("flex", 1024, 1.0, spread=0.05, seed=2)])
    assert p.tie is True and p.margin_ci[0] <= 1 <= p.margin_ci[1]
    assert p.backend in ("sdpa", "flex") and p.runner_up in ("sdpa", "flex")


def test_error_budget_excludes_a_fast_inexact_backend():
    """An approximation exact to its own formulation (own_rel_l2) but 1e-2 from exact attention:
    out by default, in under --max-error 0.05."""
    approx = {"vs": "fp64 reference", "rel_l2": 1e-2, "max_abs": 1e-2, "full_rel_l2": 1e-2, "own_rel_l2": 1e-7}
    recs = [rec("sdpa", 1024, 1.0), rec("eager", 1024, 2.0), rec("fast", 1024, 0.2, error=approx)]
    [p] = recommend(recs)  # default: exact within float32's tolerance
    assert tolerance("float32") < 1e-2 and p.backend == "sdpa"
    [p] = recommend(recs, max_error=0.05)
    assert p.backend == "fast" and p.runner_up == "sdpa"
    [p] = recommend([rec("fast", 1024, 0.2, err=1e-2, dtype="bfloat16")])
    assert p.backend == "fast"  # 1e-2 is exact for bfloat16 (16 units of 2⁻⁸ roundoff)


def test_a_wrong_output_never_qualifies_whatever_max_error_allows():
    """An exact variant's kernel 1e-2 from its fp64 reference in float32 is wrong (core/correctness.py):
    not picked even under --max-error 0.05, and the pick names it with the reason."""
    recs = [rec("sdpa", 1024, 1.0), rec("eager", 1024, 2.0), rec("fast", 1024, 0.2, err=1e-2)]
    for max_error in (None, 0.05):
        [p] = recommend(recs, max_error=max_error)
        assert p.backend == "sdpa" and p.runner_up == "eager"
        assert "fast left out as wrong (error 1.0e-02 > 7.9e-06 allowed for float32 at Lk 1024)" in p.note
    [p] = recommend([rec("fast", 1024, 0.2, err=1e-2)], max_error=0.05)
    assert p.backend is None and p.note == ("nothing qualifies: wrong: error 1.0e-02 > 7.9e-06 allowed for "
                                            "float32 at Lk 1024")


def test_a_tf32_kernel_qualifies_within_tf32s_budget():
    """A GPU kernel with float32 dots in TF32 (error `dots: tf32`) 3e-4 from the reference: correct and picked."""
    tf32 = {"vs": "fp64 reference", "rel_l2": 3e-4, "max_abs": 1e-3, "dots": "tf32"}
    [p] = recommend([rec("triton", 1024, 0.5, error=tf32), rec("sdpa", 1024, 1.0)])
    assert p.backend == "triton" and "wrong" not in p.note


def test_memory_budget_excludes_what_does_not_fit():
    recs = [rec("sdpa", 1024, 1.0, peak=10 * 2**30), rec("flex", 1024, 3.0, peak=2**30)]
    [p] = recommend(recs, memory_budget=8 * 2**30)
    assert p.backend == "flex" and p.runner_up is None and "no runner-up" in p.note and p.margin is None
    [p] = recommend(recs, memory_budget=2**20)
    assert p.backend is None and "nothing qualifies" in p.note


def test_crossover_where_the_choice_changes():
    recs = [rec("eager", L, 0.6 * L / 1024) for L in (1024, 2048, 4096, 8192)]
    recs += [rec("sdpa", L, 1.0 * (L / 1024) ** 0.5) for L in (1024, 2048, 4096, 8192)]
    picks = recommend(recs)
    assert [p.backend for p in picks] == ["eager", "eager", "sdpa", "sdpa"]  # 0.6·L vs √L: they cross between 2k and 4k
    [c] = crossovers(picks)
    assert (c["below"], c["at"], c["from"], c["to"]) == (2048, 4096, "eager", "sdpa")


def test_model_records_are_separate_dispatches_per_layer_group():
    a = rec("sdpa", 1024, 1.0, model="gemma-2-9b", variant="gqa", layers=42)
    b = rec("flex", 1024, 0.5, model="gemma-2-9b", variant="sliding_window", params={"window": 4096}, layers=42)
    picks = recommend([a, b])
    assert len(picks) == 2 and all(p.runner_up is None for p in picks)


def test_json_output_is_the_documented_list(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    recs = [rec("sdpa", 1024, 1.0), rec("eager", 1024, 2.0), rec("sdpa", 2048, 2.0)]
    path.write_text("\n".join(json.dumps(x) for x in [make_header(["t"], ENV, None), *recs]) + "\n")
    assert main(["recommend", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2
    for r in rows:
        assert {"shape", "seq", "mode", "backend", "runner_up", "margin", "margin_ci", "tie"} <= set(r)
        assert set(r["shape"]) == {"batch", "heads", "kv_heads", "head_dim", "dtype", "causal"}
        assert isinstance(r["seq"], int) and isinstance(r["backend"], str)
        assert r["margin_ci"] is None or (len(r["margin_ci"]) == 2 and r["margin_ci"][0] <= r["margin_ci"][1])
        assert r["tie"] in (True, False, None)
    assert rows[1]["runner_up"] is None and rows[1]["tie"] is None
    assert attnbench.recommend([path]) == rows  # the library gives the same table
    assert main(["recommend", str(path), "--format", "yaml"]) == 2
    assert "accepted: table, markdown, json" in capsys.readouterr().err
    assert main(["recommend", str(path), "--format", "markdown"]) == 0
    assert "| sdpa | eager |" in capsys.readouterr().out


def test_a_length_where_nothing_ran_says_so():
    skipped = rec("sdpa", 8192, 1.0) | {"status": "skipped", "latency_ms": None, "samples_ms": None}
    picks = recommend([rec("sdpa", 1024, 1.0), skipped])
    assert [(p.seq, p.backend) for p in picks] == [(1024, "sdpa"), (8192, None)]
    assert picks[1].note == "nothing ran (1 skipped)" and crossovers(picks) == []


def test_default_tolerance_keeps_float32_exact_attention_at_long_lengths():
    # float32 attention against fp64 measured on the CPU (llama-3-8b decode, eager/sdpa): 6e-7 at 1k, 1.7e-6 at 8k
    for L, err in ((1024, 6.3e-7), (8192, 1.7e-6)):
        assert err * 3 < tolerance("float32", L) < 1e-4  # exact float32 passes; a TF32 kernel (1e-4..1e-3) does not
    assert 3e-3 * 3 < tolerance("bfloat16", 8192) < 0.05


def _energy(j, reason=None):
    return {"energy_j": j, "energy_j_per_token": None if j is None else j / 1024, "source": "nvml", "reason": reason}


def test_metric_energy_ranks_by_joules_per_call_without_an_interval():
    """The faster backend spends more energy per call here: latency and energy pick differently."""
    fast = rec("sdpa", 1024, 1.0, energy=_energy(0.30))
    frugal = rec("flex", 1024, 1.5, energy=_energy(0.20))
    [by_time] = recommend([fast, frugal])
    [p] = recommend([fast, frugal], metric="energy")
    assert by_time.backend == "sdpa" and p.backend == "flex" and p.runner_up == "sdpa"
    assert abs(p.margin - 1.5) < 1e-9 and p.margin_ci is None and p.tie is None
    assert "one energy reading" in p.note


def test_metric_energy_without_energy_says_why():
    [p] = recommend([rec("sdpa", 1024, 1.0, energy=_energy(None, "no RAPL package counters"))], metric="energy")
    assert p.backend is None and "no energy measured: no RAPL package counters" in p.note


def test_recommend_cli_rank_by(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    lines = [make_header(["t"], ENV, None), rec("sdpa", 1024, 1.0, energy=_energy(0.3)),
             rec("flex", 1024, 1.5, energy=_energy(0.2))]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["recommend", str(path), "--rank-by", "energy", "--format", "json"]) in (0, None)
    assert json.loads(capsys.readouterr().out)[0]["backend"] == "flex"
    assert main(["recommend", str(path), "--rank-by", "watts"]) == 2
    assert "unknown --rank-by 'watts'; accepted: latency, energy" in capsys.readouterr().err


def test_a_backend_that_failed_at_a_length_is_not_picked_there_and_the_pick_says_so():
    crash = "CppCompileError: C++ compile error … /tmp/x.cpp:3:1: error: 'vec' was not declared in this scope"
    recs = [rec("flex", L, 0.5 * L / 1024) for L in (1024, 4096)]
    recs += [rec("sdpa", L, 1.0 * L / 1024) for L in (1024, 2048, 4096)]
    recs.append(rec("flex", 2048, 1.0, status="error", reason=crash, latency_ms=None, samples_ms=None))
    picks = {p.seq: p for p in recommend(recs)}
    assert picks[2048].backend == "sdpa"
    assert picks[2048].failed == ({"backend": "gqa:flex", "status": "error", "reason": crash},)
    assert f"gqa:flex failed here (error: {crash})" in picks[2048].note
    assert picks[4096].backend == "flex" and "flex failed at 2k (error)" in picks[4096].note
    assert picks[1024].backend == "flex" and "failed" in picks[1024].note
    assert picks[2048].as_json()["failed"][0]["reason"] == crash


def test_transformers_implementations_are_ranked_and_named():
    [ours] = recommend([rec("sdpa", 1024, 1.0), rec("hf-eager", 1024, 3.0), rec("hf-sdpa", 1024, 1.5)])
    assert ours.backend == "sdpa" and ours.runner_up == "hf-sdpa"
    assert 'transformers\' fastest: hf-sdpa (attn_implementation="sdpa"), 1.' in ours.note
    assert abs(float(ours.note.split("), ")[1].split("×")[0]) - ours.margin) < 0.01  # the runner-up's margin
    [theirs] = recommend([rec("eager", 1024, 2.0), rec("hf-sdpa", 1024, 1.0)])
    assert theirs.backend == "hf-sdpa" and 'transformers: attn_implementation="sdpa"' in theirs.note
    [plain] = recommend([rec("sdpa", 1024, 1.0), rec("eager", 1024, 2.0)])
    assert "transformers" not in plain.note
