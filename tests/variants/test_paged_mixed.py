"""Mixed batches of the `paged` variant (run --batch-spec): prefill chunks and decodes in one call.

Every backend is held to an fp64 oracle written here from the conftest one: request by request,
its packed query rows against the first S keys of the padded cache, causal bottom-right. The
paged layout holds the same tokens for the same seed (tests/variants/test_paged.py checks it slot
by slot), so both layouts are compared with the one oracle. FLOPs and bytes are checked against a
count of the real (query, key) pairs made one pair at a time; sdpa's padding by hand.
"""

from __future__ import annotations

import pytest
import torch

from attnbench.core.problem import Problem
from attnbench.core.results import validate_record
from attnbench.variants import paged, paged_mixed, registry
from conftest import rel_l2

CPU = torch.device("cpu")
V = registry.get("paged")
SPEC = "2q64s96_3q1s80"  # two chunks of 64 over 96 keys (32 cached), three decodes over 80


def problem(spec=SPEC, layout="paged", heads=4, dtype="float32", page=16) -> Problem:
    return V.resolve(Problem(heads=heads, kv_heads=0, head_dim=32, dtype=dtype,
                             params=(("batch_spec", spec), ("kv_layout", layout), ("page_size", page))))


def fp64_mixed(p: Problem, oracle) -> torch.Tensor:
    """The packed output from the dense layout's inputs, one request at a time."""
    q, k, v = V.make_inputs(problem(p.param("batch_spec"), "dense", p.heads, p.dtype), CPU)
    out, at = [], 0
    for b, (ql, sl) in enumerate(paged_mixed.spec(p).requests):
        out.append(oracle(q[:, :, at:at + ql], k[b:b + 1, :, :sl], v[b:b + 1, :, :sl], causal=True))
        at += ql
    return torch.cat(out, dim=2)


def test_the_problem_is_the_padded_shape_and_the_inputs_are_packed():
    p = problem()
    assert (p.batch, p.seq_q, p.seq_k, p.causal, p.mode) == (5, 64, 96, True, "fwd")
    assert p.param("seq_dist") is None and p.kv_heads == 1
    q, k, _ = V.make_inputs(p, CPU)
    assert q.shape == (1, 4, 131, 32)  # 2·64 + 3 rows, no padding
    assert k.shape == (2 * 6 + 3 * 5, 16, 1, 32)  # the pool: ⌈96/16⌉ pages twice, ⌈80/16⌉ thrice


@pytest.mark.parametrize("layout", ["paged", "dense"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_eager_and_sdpa_match_the_fp64_oracle(backend, layout, oracle):
    p = problem(layout=layout)
    q, k, v = V.make_inputs(p, CPU)
    out = V.backend(backend).build(p, CPU)(q, k, v)
    assert out.shape == q.shape
    assert rel_l2(out, fp64_mixed(p, oracle)) < 1e-6


def test_bf16_sdpa_within_the_dtypes_budget(oracle):
    from attnbench.core.tolerance import tolerance

    p = problem(dtype="bfloat16")
    q, k, v = V.make_inputs(p, CPU)
    assert rel_l2(V.backend("sdpa").build(p, CPU)(q, k, v), fp64_mixed(p, oracle)) < tolerance("bfloat16", p.seq_k)


def test_triton_runs_a_decode_only_spec_and_refuses_prefill_rows(oracle):
    for layout in ("paged", "dense"):
        p = problem("3q1s40_q1s17", layout)
        q, k, v = V.make_inputs(p, CPU)
        assert rel_l2(V.backend("triton").build(p, CPU)(q, k, v), fp64_mixed(p, oracle)) < 1e-5
    decision = registry.decide(V, "triton", problem(), CPU, check_availability=False)
    assert decision.status == "unsupported" and "decode-only" in decision.reason and "prefill rows" in decision.reason


@pytest.mark.slow  # ~15-30 s: FlexAttention's CPU compile on a loaded machine
def test_flex_over_the_packed_batch_matches_the_fp64_oracle(oracle):
    p = problem("q160s176_3q1s40")  # query block 0 all one chunk (full pages), block 1 the rest and 3 decodes
    q, k, v = V.make_inputs(p, CPU)
    assert rel_l2(V.backend("flex").build(p, CPU)(q, k, v), fp64_mixed(p, oracle)) < 1e-5


def test_flex_lists_only_each_requests_own_pages():
    """Block lists of the document-style mask: query block 0 holds rows 0..127 of the chunk (positions
    16..143 over 176 keys); block 1 the chunk's rows 128..159 and the three decodes."""
    p = problem("q160s176_3q1s40")
    s, table = paged_mixed.spec(p), paged.block_table(p)
    partial, full = paged_mixed.block_lists(s, table, 16, 128)
    own = [set(table[b, : -(-sl // 16)].tolist()) for b, (_, sl) in enumerate(s.requests)]
    assert full[0] == table[0, :1].tolist()  # page 0 (keys 0..15) is below every row's position >= 16
    assert set(partial[0]) == set(table[0, 1:9].tolist())  # pages 1..8: up to position 143
    assert full[1] == [] and set(partial[1]) == own[0] | own[1] | own[2] | own[3]
    assert len(partial[1]) == 11 + 3 * 3  # 11 pages of the chunk (176 keys), 3 of each decode (40 keys)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_padded_queries_are_refused_with_the_reason(backend):
    p = problem(layout="dense")
    _, k, v = V.make_inputs(p, CPU)
    with pytest.raises(ValueError, match="use --inputs randn with --batch-spec"):
        V.backend(backend).build(p, CPU)(torch.randn(5, 4, 64, 32), k, v)  # what --inputs peaked builds


def test_flex_needs_the_paged_pool():
    why = registry.decide(V, "flex", problem(layout="dense"), CPU, check_availability=False).reason
    assert "kv_layout=paged" in why


# ---------------------------------------------------------------- cost model and record
def _pairs_one_at_a_time(requests) -> int:
    return sum(1 for q, s in requests for i in range(q) for j in range(s) if j <= s - q + i)


def test_flops_and_bytes_count_the_real_tokens_only():
    p = problem(heads=4)  # Hq 4, Hkv 1, D 32, fp32
    pairs = _pairs_one_at_a_time([(64, 96)] * 2 + [(1, 80)] * 3)
    assert pairs == 2 * (64 * 32 + 64 * 65 // 2) + 3 * 80 == 8496
    assert V.flops(p) == 4 * 4 * 32 * pairs
    kv = 2 * 1 * 32 * (2 * 96 + 3 * 80) * 4
    assert V.kv_cache_bytes(p) == kv and V.bytes(p) == 2 * 4 * 32 * 131 * 4 + kv
    assert V.kv_cache_bytes(problem(layout="dense")) == kv  # the padded cache's slack is not counted


def test_sdpa_computes_the_padded_rectangle_and_padding_frac_is_its_waste():
    p = problem(heads=4)
    sdpa = V.backend("sdpa")
    assert sdpa.work_flops(p) == 4 * 4 * 32 * 5 * 64 * 96  # (B, max Q, max S) whatever the mask
    real_blocks = 2 * 64 * 96 + 3 * 80
    assert V.bytes(p) < sdpa.work_flops(p)
    assert paged.ragged_fields(p)["padding_frac"] == pytest.approx(1 - real_blocks / (5 * 64 * 96))


def test_every_record_carries_the_composition():
    from attnbench.run.plan import Case
    from attnbench.run.worker import base_record

    for backend, status in (("sdpa", None), ("flex", "unsupported")):
        rec = base_record(Case("paged", backend, problem(layout="dense"), status, status and "why"), CPU)
        validate_record({"type": "record", **rec, "status": status or "ok"}, "test", 1)
        assert rec["batch_spec"] == SPEC and rec["q_tokens"] == 131 and "seq_dist" not in rec
        assert rec["composition"] == [{"count": 2, "q_len": 64, "kv_len": 96}, {"count": 3, "q_len": 1, "kv_len": 80}]
        assert rec["params"]["batch_spec"] == SPEC and (rec["batch"], rec["seq_q"], rec["seq_k"]) == (5, 64, 96)


def test_a_batch_spec_is_one_forward_call():
    from attnbench.core.errors import UsageError

    with pytest.raises(UsageError, match="mode fwd only"):
        V.resolve(Problem(heads=4, kv_heads=0, mode="decode", params=(("batch_spec", "q1s8"),)))


@pytest.mark.slow  # ~10 s: torch.profiler and the timing warm-up on a loaded machine
def test_a_measured_record_carries_the_composition_and_its_error():
    from attnbench.measure.timing import TimingPolicy
    from attnbench.run.case import run_case
    from attnbench.run.plan import Case
    from attnbench.run.worker import base_record

    case = Case("paged", "sdpa", problem())
    rec = base_record(case, CPU) | run_case(case, CPU, TimingPolicy(min_samples=1, min_time=0.0, max_time=0.05,
                                                                    warmup_time=0.0), None)
    validate_record({"type": "record", **rec}, "test", 1)
    assert rec["status"] == "ok" and rec["batch_spec"] == SPEC and rec["attn_entropy"] is None
    assert rec["error"]["rel_l2"] < 1e-6 and rec["flops"] == V.flops(problem())
