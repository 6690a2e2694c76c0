"""The `paged` variant: ragged batches over a paged or padded KV cache.

Every CPU backend is held to an fp64 reference written here from the conftest oracle, one sequence
at a time over the padded inputs' real tokens; the paged layout holds the same tokens (checked
slot by slot), so paged and dense must agree. Lengths are ragged on purpose: not multiples of the
page size, length 1, a sequence shorter than one page, one exactly one page long.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from attnbench.core.errors import UsageError
from attnbench.core.problem import Problem
from attnbench.core.results import validate_record
from attnbench.variants import paged, registry
from conftest import rel_l2

CPU = torch.device("cpu")
V = registry.get("paged")
LENGTHS = "37,1,100,16"  # B=4: odd, one token, the longest, exactly one page of 16


def problem(mode="decode", layout="paged", dist=LENGTHS, batch=4, seq=64, page=16, heads=4, kv_heads=0,
            dtype="float32") -> Problem:
    raw = Problem(batch=batch, heads=heads, kv_heads=kv_heads, seq_q=1 if mode == "decode" else seq,
                  seq_k=seq if mode == "decode" else 0, head_dim=32, dtype=dtype, mode=mode,
                  params=(("kv_layout", layout), ("page_size", page), ("seq_dist", dist)))
    return V.resolve(raw)


def fp64_ragged(q, k_dense, v_dense, lengths, causal, oracle):
    """Sequence b attends its first L_b keys of the padded cache; padded query rows are 0."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b, n in enumerate(lengths):
        rows = q.shape[2] if q.shape[2] == 1 else n
        out[b:b + 1, :, :rows] = oracle(q[b:b + 1, :, :rows], k_dense[b:b + 1, :, :n], v_dense[b:b + 1, :, :n],
                                        causal=causal)
    return out


# ---------------------------------------------------------------- the length distribution
def test_seq_dist_grammar():
    assert paged.seq_lengths("fixed", 3, 500) == [500, 500, 500]
    assert paged.seq_lengths("1k,3k,8k", 5, 1) == [1024, 3072, 8192, 1024, 3072]
    drawn = paged.seq_lengths("uniform:1k..16k", 16, 1)
    assert all(1024 <= n <= 16384 for n in drawn) and len(set(drawn)) > 8
    assert drawn == paged.seq_lengths("uniform:1k..16k", 16, 999)  # seeded, --seq unused
    assert paged.seq_lengths("uniform:1k..16k", 4, 1) == drawn[:4]  # the first B draws do not depend on B
    assert paged.seq_lengths("uniform:7..7", 2, 1) == [7, 7]


@pytest.mark.parametrize("text,why", [
    ("uniform:1k", "needs both ends"), ("uniform:8k..1k", "end is below the start"), ("1k,,3k", "length ''"),
    ("0", "length '0'"), ("foo", "length 'foo'"), ("uniform:1x..2k", "length '1x'"), ("", "bad seq_dist ''"),
    ("normal:1k..2k", "bad seq_dist"),
])
def test_seq_dist_errors_say_what_is_accepted(text, why):
    with pytest.raises(UsageError, match="accepted: fixed, uniform:A..B") as e:
        paged.parse_seq_dist(text)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_resolve_maps_the_batch_onto_the_problem():
    p = problem("decode", seq=64)
    assert (p.batch, p.seq_q, p.seq_k, p.causal, p.kv_heads) == (4, 1, 100, False, 1)  # seq_k = longest
    p = problem("fwd", seq=64)
    assert (p.seq_q, p.seq_k, p.causal) == (100, 100, True)  # prefill: causal, queries padded to Lmax
    p = problem("decode", dist="fixed", seq=300)
    assert (p.seq_k, paged.lengths_of(p)) == (300, [300] * 4)
    assert V.resolve(p) == p  # resolving twice changes nothing
    with pytest.raises(UsageError, match="bad kv_layout 'ring'"):
        problem(layout="ring")


def test_block_table_is_shuffled_and_covers_every_page_once():
    p = problem()
    table, lengths = paged.block_table(p), paged.lengths_of(p)
    pages = [table[b, : -(-n // 16)].tolist() for b, n in enumerate(lengths)]
    flat = [x for seq in pages for x in seq]
    assert sorted(flat) == list(range(paged.pool_pages(p))) == list(range(3 + 1 + 7 + 1))
    assert flat != sorted(flat)  # the indirection is real


def test_pool_holds_the_padded_inputs_tokens_slot_by_slot():
    p, pd = problem(), problem(layout="dense")
    q, k, v = paged.make_inputs(p, CPU)
    qd, kd, vd = paged.make_inputs(pd, CPU)
    assert torch.equal(q, qd) and k.shape == (12, 16, 1, 32) and kd.shape == (4, 1, 100, 32)
    table = paged.block_table(p)
    for b, n in enumerate(paged.lengths_of(p)):
        for t in range(n):
            page, slot = int(table[b, t // 16]), t % 16
            assert torch.equal(k[page, slot], kd[b, :, t]) and torch.equal(v[page, slot], vd[b, :, t])
    assert kd[1, :, 1:].abs().sum() > 0  # padding is noise, not zeros


# ---------------------------------------------------------------- backends against fp64
@pytest.mark.parametrize("layout", ["paged", "dense"])
@pytest.mark.parametrize("mode", ["decode", "fwd"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_backend_matches_fp64_reference(backend, mode, layout, oracle):
    p, pd = problem(mode, layout), problem(mode, "dense")
    q, k, v = paged.make_inputs(p, CPU)
    _, kd, vd = paged.make_inputs(pd, CPU)
    want = fp64_ragged(q, kd, vd, paged.lengths_of(p), p.causal, oracle)
    with torch.no_grad():
        out = V.backend(backend).build(p, CPU)(q, k, v)
    assert out.shape == (4, 4, p.seq_q, 32) and torch.isfinite(out).all()
    assert rel_l2(out, want) < 1e-5
    assert rel_l2(V.reference(q.double(), k.double(), v.double(), p), want) < 1e-12


def test_paged_equals_dense_for_each_backend():
    for mode in ("decode", "fwd"):
        p, pd = problem(mode), problem(mode, "dense")
        for name in ("eager", "sdpa"):
            a = V.backend(name).build(p, CPU)(*paged.make_inputs(p, CPU))
            b = V.backend(name).build(pd, CPU)(*paged.make_inputs(pd, CPU))
            assert rel_l2(a, b) < 1e-6, (mode, name)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ATTNBENCH_PAGED_FLEX") and os.cpu_count() <= 2,
                    reason="flex compiles for ~1 min per mask on 2 cores: ATTNBENCH_PAGED_FLEX=1 runs it")
@pytest.mark.parametrize("mode,layout", [("decode", "paged"), ("fwd", "paged"), ("decode", "dense")])
def test_flex_matches_fp64_reference(mode, layout, oracle):
    p, pd = problem(mode, layout, heads=4, kv_heads=2), problem(mode, "dense", heads=4, kv_heads=2)
    q, k, v = paged.make_inputs(p, CPU)
    _, kd, vd = paged.make_inputs(pd, CPU)
    with torch.no_grad():
        out = V.backend("flex").build(p, CPU)(q, k, v)
    assert rel_l2(out, fp64_ragged(q, kd, vd, paged.lengths_of(p), p.causal, oracle)) < 1e-5


def test_flex_block_lists_skip_other_sequences_pages():
    """The BlockMask of the paged layout lists, for each sequence, exactly its own pages: the
    full ones (no mask_mod) and its last partial page."""
    from attnbench.variants.paged_flex import block_states

    lens = torch.tensor([37, 1, 100, 16])
    visible, full = block_states(lens, 7, 16, 1, causal=False)
    assert visible.sum(-1).flatten().tolist() == [3, 1, 7, 1] and full.sum(-1).flatten().tolist() == [2, 0, 6, 1]
    visible, full = block_states(torch.tensor([200]), 13, 16, 200, causal=True)  # query blocks of 128
    assert visible.sum(-1).flatten().tolist() == [8, 13] and full.sum(-1).flatten().tolist() == [0, 8]


def test_unsupported_and_unavailable_say_why():
    assert registry.decide(V, "triton", problem("fwd"), CPU, check_availability=False) == registry.Decision(
        "unsupported", "the Triton paged kernel is decode-only (one query per sequence); prefill: eager, sdpa, flex")
    assert registry.decide(V, "triton", problem(), CPU).status == "unavailable"
    assert "page_size must be a power of two" in registry.decide(V, "flex", problem(page=12), CPU).reason
    assert registry.decide(V, "eager", replace(problem(), mode="bwd"), CPU).status == "unsupported"


def test_dense_inputs_in_the_paged_layout_are_refused():
    p = problem()
    q = torch.randn(4, 4, 1, 32)
    k = torch.randn(4, 1, 100, 32)  # what --inputs peaked builds
    with pytest.raises(ValueError, match="use --param kv_layout=dense"):
        V.backend("eager").build(p, CPU)(q, k, k)


# ---------------------------------------------------------------- cost model and record
def test_flops_bytes_and_kv_cache_by_hand():
    p = problem("decode", dist="37,1,100", batch=3)  # B=3, Hq=4, Hkv=1, D=32, fp32; 138 real tokens
    assert V.flops(p) == 4 * 4 * 32 * 138 == 70656
    assert V.kv_cache_bytes(p) == 2 * 1 * 32 * 138 * 4 == 35328
    assert V.bytes(p) == 2 * 4 * 32 * 3 * 4 + 35328 == 38400  # q read, out written: B rows
    f = problem("fwd", dist="37,1,100", batch=3)
    assert V.flops(f) == 4 * 4 * 32 * (37 * 38 // 2 + 1 + 100 * 101 // 2) == 2946048
    assert V.bytes(f) == 2 * 4 * 32 * 138 * 4 + 35328 == 176640
    h = problem("decode", dist="37,1,100", batch=3, dtype="float16")
    assert V.kv_cache_bytes(h) == 35328 / 2


def test_padding_fraction_and_record_fields():
    fields = paged.ragged_fields(problem(dist="37,1,100", batch=3))
    assert fields == {"seq_dist": "37,1,100", "seq_lengths": {"min": 1, "mean": 46.0, "max": 100, "total": 138},
                      "padding_frac": pytest.approx(1 - 138 / 300)}
    assert paged.ragged_fields(problem(dist="fixed"))["padding_frac"] == 0.0
    assert paged.ragged_fields(Problem()) == {}  # other variants' records do not get them


@pytest.mark.slow  # ~10 s: torch.profiler and the timing warm-up on a loaded machine
def test_a_measured_record_carries_the_distribution():
    from attnbench.measure.timing import TimingPolicy
    from attnbench.run.case import run_case
    from attnbench.run.plan import Case
    from attnbench.run.worker import base_record

    case = Case("paged", "sdpa", problem())
    rec = base_record(case, CPU) | run_case(case, CPU, TimingPolicy(min_samples=1, min_time=0.0, max_time=0.05,
                                                                    warmup_time=0.0), None)
    validate_record({"type": "record", **rec}, "test", 1)
    assert rec["status"] == "ok" and rec["kv_cache_bytes"] == 2 * 32 * 154 * 4 and rec["attn_entropy"] is None
    assert rec["error"]["rel_l2"] < 1e-5 and rec["seq_lengths"]["total"] == 154
    assert rec["padding_frac"] == pytest.approx(1 - 154 / 400)
    from pydantic import ValidationError

    from attnbench.core.schema import RecordModel
    with pytest.raises(ValidationError):
        RecordModel.model_validate({"type": "record", **rec, "padding_frac": 1.5})


# ---------------------------------------------------------------- the command line
def test_run_flags_become_parameters():
    assert paged.flag_params("dense", None, "1k,2k") == {"kv_layout": "dense", "seq_dist": "1k,2k"}
    assert paged.flag_params(None, 32, None) == {"page_size": 32}


@pytest.mark.parametrize("args,says", [
    (["--kv-layout", "pagd"], "error: bad --kv-layout 'pagd'; accepted: dense, paged"),
    (["--page-size", "0"], "error: bad --page-size value 0; accepted: an integer >= 1"),
    (["--seq-dist", "uniform:9k..1k"], "error: --seq-dist: bad seq_dist 'uniform:9k..1k': the end is below"),
    (["--variants", "mha", "--seq-dist", "1k"], "error: --page-size and --seq-dist go with --kv-layout"),
])
def test_bad_flags_are_one_line_exit_2_and_write_nothing(args, says, tmp_path, capsys):
    from attnbench.cli import main

    out = tmp_path / "r.jsonl"
    assert main(["run", "--variants", "paged", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(says) and "\n" not in err and not out.exists()


def test_run_prints_the_padding_of_each_ragged_batch():
    from attnbench.cli.tables import ragged_notes

    rec = {"batch": 3, **paged.ragged_fields(problem(dist="37,1,100", batch=3))}
    assert ragged_notes([rec, rec, {"batch": 1}]) == [
        "ragged batch B=3 seq_dist 37,1,100: lengths 1..100, mean 46, 138 real tokens (FLOPs and bytes count them "
        "only); padding_frac 0.540 of the padded (B, Lmax) slots (sdpa computes them)"]
