"""core/correctness.py: an ok record is correct, wrong (with the reason) or not checked; the budget
is the dtype's at the record's Lk (core/tolerance.py), TF32's for a `dots: tf32` record; an
approximation is held to its own formulation (own_rel_l2), never to exact attention."""

from __future__ import annotations

import math

import pytest

from attnbench.core.correctness import CORRECT, NOT_CHECKED, NOT_OK, WRONG, judge, left_out_lines, split, why_wrong

U32, U16, UBF = 2.0**-24, 2.0**-11, 2.0**-8


def rec(dtype="float32", seq_k=1024, **error) -> dict:
    return {"variant": "mha", "backend": "x", "status": "ok", "dtype": dtype, "seq_q": seq_k, "seq_k": seq_k,
            "mode": "fwd", "params": {}, "error": {"vs": "fp64 reference", **error} if error else None}


@pytest.mark.parametrize("dtype,u", [("float32", U32), ("bfloat16", UBF)])
@pytest.mark.parametrize("seq_k", [256, 8192])
def test_the_budget_is_the_dtypes_at_the_records_length(dtype, u, seq_k):
    """4·(u_dtype + u_fp32·√Lk), written out here: just under it is correct, just over it wrong."""
    limit = 4 * (u + U32 * math.sqrt(seq_k))
    assert judge(rec(dtype, seq_k, rel_l2=0.99 * limit)).state == CORRECT
    j = judge(rec(dtype, seq_k, rel_l2=1.01 * limit))
    assert j.state == WRONG and j.reason == f"error {1.01 * limit:.1e} > {limit:.1e} allowed for {dtype} at Lk {seq_k}"


def test_float32_is_not_bfloat16s_budget():
    """An error bfloat16 allows (1e-3 at 1k) is wrong for float32; the budget grows with Lk."""
    assert judge(rec("bfloat16", 1024, rel_l2=1e-3)).state == CORRECT
    assert judge(rec("float32", 1024, rel_l2=1e-3)).state == WRONG
    assert judge(rec("float32", 256, rel_l2=5e-6)).state == WRONG  # 4.1e-6 allowed at 256
    assert judge(rec("float32", 8192, rel_l2=5e-6)).state == CORRECT  # 2.2e-5 at 8k


def test_a_tf32_kernel_gets_tf32s_budget_not_float32s():
    """On a GPU, fp32 inputs to a TF32 kernel round to 10 mantissa bits: 5e-4 is fine there."""
    assert judge(rec("float32", 1024, rel_l2=5e-4)).state == WRONG
    assert judge(rec("float32", 1024, rel_l2=5e-4, dots="tf32")).state == CORRECT
    assert "tfloat32" in judge(rec("float32", 1024, rel_l2=5e-3, dots="tf32")).reason


def test_an_unmeasured_error_is_not_checked_not_wrong():
    no_error = rec()
    assert judge(no_error).state == NOT_CHECKED and why_wrong(no_error) is None
    too_big = rec(reason="reference too large (2.1e+09 scores > 1.3e+08)")
    assert judge(too_big).state == NOT_CHECKED
    assert "reference too large" in judge(too_big).reason
    bwd = {**rec(), "mode": "bwd"}
    assert judge(bwd).state == NOT_CHECKED and "bwd" in judge(bwd).reason


def test_an_approximation_is_judged_against_its_own_formulation():
    """linformer at error 3 from exact attention but 1e-7 from its own fp64 formulation: correct;
    1e-2 from its own formulation in float32: wrong, whatever its approximation error."""
    assert judge(rec(rel_l2=3.0, full_rel_l2=3.0, own_rel_l2=1e-7)).state == CORRECT
    assert judge(rec(rel_l2=3.0, full_rel_l2=3.0, own_rel_l2=1e-2)).state == WRONG
    # the eager backend is its own oracle, and older records have no own error: not checked
    assert judge(rec(rel_l2=3.0, full_rel_l2=3.0, own_reason="the eager backend is ...")).state == NOT_CHECKED
    assert judge(rec(rel_l2=3.0, full_rel_l2=3.0)).state == NOT_CHECKED
    assert judge({**rec(rel_l2=0.2), "_exact": False}).state == NOT_CHECKED  # the catalogue says: approximation
    # the run names the key: a sliding window as wide as L equals full attention, and is still judged
    assert judge(rec(rel_l2=2e-2, full_rel_l2=2e-2, judged_by="rel_l2")).state == WRONG
    assert judge(rec(rel_l2=3.0, full_rel_l2=3.0, own_rel_l2=1e-7, judged_by="own_rel_l2")).state == CORRECT
    # a pattern (sliding window) is exact to its own definition: rel_l2 judged, full_rel_l2 is not a criterion
    assert judge(rec(rel_l2=1e-7, full_rel_l2=0.6)).state == CORRECT
    assert judge(rec(rel_l2=1e-2, full_rel_l2=0.6)).state == WRONG


def test_a_failed_definition_reference_check_is_wrong():
    check = {"passed": False, "max_abs": 0.5, "max_rel": 0.3, "lse_max_abs": 0.01, "tolerance": {"atol": 1e-2,
             "rtol": 1e-2}, "reference": "gqa_paged_decode_h32_kv8_d128_ps1"}
    r = {**rec(rel_l2=1e-7), "reference_check": check}
    assert judge(r).state == WRONG
    assert judge(r).reason == ("fails its definition's reference (gqa_paged_decode_h32_kv8_d128_ps1): max_abs 5.0e-01, "
                               "max_rel 3.0e-01, lse_max_abs 1.0e-02 beyond tolerance atol 0.01, rtol 0.01")
    assert judge({**r, "reference_check": {**check, "passed": True}}).state == CORRECT


def test_nan_is_wrong_and_failures_are_not_judged():
    assert judge(rec(rel_l2=float("nan"))).state == WRONG
    assert judge({**rec(rel_l2=1.0), "status": "oom"}).state == NOT_OK


def test_split_keeps_all_but_the_wrong_and_names_them():
    good, bad, unchecked = rec(rel_l2=1e-7), rec(rel_l2=0.1), rec()
    kept, wrong = split([good, bad, unchecked])
    assert kept == [good, unchecked] and [r for r, _ in wrong] == [bad]
    [line] = left_out_lines(wrong, "speedups")
    assert line.startswith("wrong, left out of speedups: mha:x float32 L1024 fwd — error 1.0e-01 > ")
    many = left_out_lines(wrong * 10, "speedups", limit=3)
    assert len(many) == 4 and many[-1] == "… and 7 more wrong records left out of speedups"
