"""Every backend of every mapped op against the definition's reference (our own code in the fixture
definitions, run as --trust-reference runs it), at tiny shapes: page sizes 1 and 64 with
kv_last_page_len, head ratios 1, 4 and 8, head_dim 64 and 256, MLA paged and ragged, decode and
prefill. Triton runs interpreted (tests/conftest.py sets TRITON_INTERPRET=1); flex compiles for
about a minute on this CPU, so it has one slow test."""

from __future__ import annotations

import pytest
import torch
from fitrace_fixtures import dsa_paged, gqa_paged, gqa_ragged, mla_paged

from attnbench.core.fitrace import Definition, Workload
from attnbench.measure.trace_check import reference_check
from attnbench.run.trace_case import reference_fn
from attnbench.variants.fitrace import backends as fb
from attnbench.variants.fitrace import ops
from attnbench.variants.fitrace.inputs import build_inputs

CPU = torch.device("cpu")
OPS = {
    "gqa_decode_ps1_r4_d64": (gqa_paged("decode", 8, 2, 64, 1),
                              {"batch_size": 3, "num_pages": 40, "len_indptr": 4, "num_kv_indices": 30}),
    "gqa_decode_ps64_r1_d256": (gqa_paged("decode", 2, 2, 256, 64),
                                {"batch_size": 2, "num_pages": 5, "len_indptr": 3, "num_kv_indices": 4}),
    "gqa_prefill_ps64_r8_d64": (gqa_paged("prefill", 8, 1, 64, 64),
                                {"batch_size": 2, "num_pages": 6, "len_indptr": 3, "num_kv_indices": 4, "total_q": 40}),
    "gqa_ragged_r4_d64": (gqa_ragged(4, 1, 64), {"len_indptr": 3, "total_q": 20, "total_kv": 50}),
    "mla_ragged_qk64_vo32": (gqa_ragged(4, 4, 64, 32, op="mla_ragged"),
                             {"len_indptr": 3, "total_q": 20, "total_kv": 50}),
    "mla_decode_ps1": (mla_paged("decode", 4, 64, 16, 1),
                       {"batch_size": 2, "num_pages": 50, "len_indptr": 3, "num_kv_indices": 30}),
    "mla_prefill_ps64": (mla_paged("prefill", 4, 64, 16, 64),
                         {"batch_size": 2, "num_pages": 6, "len_indptr": 3, "num_kv_indices": 4, "total_q": 30}),
    "dsa_ps64_topk256_padded": (dsa_paged(4, 64, 16, 64, 256), {"num_tokens": 3, "num_pages": 3}),  # 192 rows: 64 x -1
}


def _setup(key: str):
    dj, axes = OPS[key]
    d = Definition.model_validate(dj)
    w = Workload(uuid="t", axes=axes, inputs={n: {"type": "random"} for n in d.inputs} | {
        "sm_scale": {"type": "scalar", "value": 0.11}})
    inputs, _ = build_inputs(d, w, None, CPU)
    return d, inputs, reference_fn(d)(inputs)


def _cases():
    for key, (dj, _) in OPS.items():
        d = Definition.model_validate(dj)
        for b in ops.BACKENDS:
            if b.why_unsupported(d) or b.name == "flex":
                continue
            yield pytest.param(key, b.name, id=f"{key}-{b.name}")


@pytest.mark.parametrize("key, backend", list(_cases()))
def test_each_backend_agrees_with_the_definitions_reference(key, backend):
    d, inputs, (ref_out, ref_lse) = _setup(key)
    b = ops.backend(backend)
    out, lse = b.build(d.op_type, d.stage, inputs, CPU)(inputs)
    assert out.dtype == torch.bfloat16 and out.shape == ref_out.shape
    check = reference_check(out, lse, ref_out, ref_lse, "bfloat16", 256, "definition", b.lse_reason(CPU, d.op_type))
    assert check["passed"], check
    if b.lse_reason(CPU, d.op_type) is None:
        assert check["lse_max_abs"] is not None and check["lse_max_abs"] < 1e-3
    else:
        assert lse is None and check["lse_max_abs"] is None and check["lse_reason"] == b.lse_reason(CPU, d.op_type)


@pytest.mark.parametrize("key", list(OPS))
def test_the_fp64_oracle_agrees_with_the_reference_and_a_wrong_output_fails(key):
    d, inputs, (ref_out, ref_lse) = _setup(key)
    out, lse = fb.oracle(d.op_type, d.stage, inputs)
    assert reference_check(out, lse, ref_out, ref_lse, "bfloat16", 256, "definition")["passed"]
    wrong = ref_out.float().clone()
    wrong[0, 0, 0] += 0.5  # one element off by 0.5: far outside bf16's budget
    bad = reference_check(wrong, ref_lse, ref_out, ref_lse, "bfloat16", 256, "definition")
    assert not bad["passed"] and bad["max_abs"] == pytest.approx(0.5, abs=0.02)
    bad_lse = reference_check(ref_out, ref_lse + 0.1, ref_out, ref_lse, "bfloat16", 256, "definition")
    assert not bad_lse["passed"] and bad_lse["lse_max_abs"] == pytest.approx(0.1, abs=1e-3)


def test_an_empty_sequence_gives_zeros_and_minus_infinity_like_the_reference():
    d, inputs, _ = _setup("gqa_decode_ps1_r4_d64")
    inputs["kv_indptr"] = torch.tensor([0, 10, 10, 30], dtype=torch.int32)  # sequence 1 has no pages
    ref_out, ref_lse = reference_fn(d)(inputs)
    assert torch.isinf(ref_lse[1]).all()
    for name in ("eager", "sdpa"):
        b = ops.backend(name)
        out, lse = b.build(d.op_type, d.stage, inputs, CPU)(inputs)
        assert reference_check(out, lse, ref_out, ref_lse, "bfloat16", 256, "definition")["passed"], name


@pytest.mark.slow
def test_flex_agrees_with_the_reference_on_a_paged_prefill():
    d, inputs, (ref_out, ref_lse) = _setup("gqa_prefill_ps64_r8_d64")
    b = ops.backend("flex")
    out, lse = b.build(d.op_type, d.stage, inputs, CPU)(inputs)
    check = reference_check(out, lse, ref_out, ref_lse, "bfloat16", 256, "definition", b.lse_reason(CPU, d.op_type))
    assert check["passed"], check
    assert check["lse_reason"].startswith("FlexAttention's compiled CPU kernel cannot return the lse")


def test_flex_and_triton_declare_what_they_cannot_run():
    mla = Definition.model_validate(OPS["mla_decode_ps1"][0])
    assert "power-of-two head dims" in ops.backend("flex").why_unsupported(mla)
    prefill = Definition.model_validate(OPS["gqa_prefill_ps64_r8_d64"][0])
    assert "cover gqa_paged and mla_paged decode" in ops.backend("triton").why_unsupported(prefill)


def test_queries_that_see_no_key_are_undefined_and_counted_not_compared():
    d, inputs, _ = _setup("gqa_ragged_r4_d64")
    inputs["kv_indptr"] = torch.tensor([0, 3, 50], dtype=torch.int32)  # sequence 0: 3 keys for its 10 queries
    inputs["qo_indptr"] = torch.tensor([0, 10, 20], dtype=torch.int32)
    ref_out, ref_lse = reference_fn(d)(inputs)
    for name in ("eager", "sdpa"):
        b = ops.backend(name)
        out, lse = b.build(d.op_type, d.stage, inputs, CPU)(inputs)
        check = reference_check(out, lse, ref_out, ref_lse, "bfloat16", 256, "definition", b.lse_reason(CPU, d.op_type))
        assert check["passed"] and check["undefined"] == 7 * 4 * 64, (name, check)
