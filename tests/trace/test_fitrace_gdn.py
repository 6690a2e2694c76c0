"""`gdn` (Gated DeltaNet) definitions: every backend and the float64 oracle against a reference of
our own (tests/trace/gdn_fixtures.py) at 2 q/k heads, 4 value heads, head size 16, decode and a
prefill of two sequences; the state check fails a wrong state; the synthesized inputs are in range;
the mtp stage is refused with one line; a run through the worker records both outputs' checks."""

from __future__ import annotations

import json

import pytest
import torch
from fitrace_fixtures import write
from gdn_fixtures import gdn, gdn_mtp

from attnbench.cli import main
from attnbench.core.fitrace import Definition, Workload
from attnbench.core.schema import RecordModel
from attnbench.measure.trace_check import reference_check, state_check
from attnbench.run.trace_case import reference_fn
from attnbench.variants.fitrace import ops
from attnbench.variants.fitrace.inputs import build_inputs

CPU = torch.device("cpu")
AXES = {"decode": {"batch_size": 3}, "prefill": {"total_seq_len": 90, "num_seqs": 2, "len_cu_seqlens": 3},
        "mtp": {"batch_size": 3, "seq_len": 5, "pool_size": 6}}


def _setup(stage: str):
    d = Definition.model_validate(gdn_mtp() if stage == "mtp" else gdn(stage))
    w = Workload(uuid="t", axes=AXES[stage], inputs={n: {"type": "random"} for n in d.inputs})
    inputs, notes = build_inputs(d, w, None, CPU)
    return d, inputs, notes, reference_fn(d)(inputs)


def _check(out, state, ref_out, ref_state, steps: int) -> dict:
    res = reference_check(out, None, ref_out, None, "bfloat16", steps, "definition", ops.NO_LSE_GDN)
    return state_check(res, state, ref_state, steps, 16)


@pytest.mark.parametrize("stage", ["decode", "prefill", "mtp"])
@pytest.mark.parametrize("backend", ["recurrent", "chunked"])
def test_each_backend_reproduces_the_definitions_reference(stage, backend):
    d, inputs, _, (ref_out, ref_state) = _setup(stage)
    out, state = ops.backend(backend, "gdn").build("gdn", stage, inputs, CPU)(inputs)
    assert out.dtype == torch.bfloat16 and out.shape == ref_out.shape
    assert state.dtype == torch.float32 and state.shape == ref_state.shape
    steps = {"decode": 1, "mtp": 5}.get(stage) or int(max(inputs["cu_seqlens"].diff()))
    check = _check(out, state, ref_out, ref_state, steps)
    assert check["passed"], check
    assert check["lse_max_abs"] is None and check["lse_reason"] == ops.NO_LSE_GDN
    assert check["state_max_abs"] < 1e-5 and "lse_atol" not in check["tolerance"]


@pytest.mark.parametrize("stage", ["decode", "prefill", "mtp"])
def test_the_fp64_oracle_agrees_and_a_wrong_state_or_output_fails(stage):
    d, inputs, _, (ref_out, ref_state) = _setup(stage)
    out, state = ops.oracle("gdn", stage, inputs)
    assert out.dtype == torch.float64 and _check(out, state, ref_out, ref_state, 90)["passed"]
    wrong = ref_state.clone()
    wrong[0, 0, 0, 0] += 1e-3  # one state element off by 1e-3: far outside float32's budget
    bad = _check(ref_out, wrong, ref_out, ref_state, 90)
    assert not bad["passed"] and bad["state_max_abs"] == pytest.approx(1e-3, rel=1e-3)
    assert bad["why"].startswith("new_state:")
    off = ref_out.float().clone()
    off[0] += 0.5
    assert not _check(off, ref_state, ref_out, ref_state, 90)["passed"]


def test_a_backend_without_the_decay_fails_the_check():
    d, inputs, _, (ref_out, ref_state) = _setup("prefill")
    no_decay = dict(inputs, A_log=torch.full_like(inputs["A_log"], -30.0))  # exp(A_log) ~ 0: no decay
    out, state = ops.backend("chunked", "gdn").build("gdn", "prefill", no_decay, CPU)(no_decay)
    assert not _check(out, state, ref_out, ref_state, 90)["passed"]


def test_synthesized_inputs_are_in_the_models_ranges():
    d, inputs, notes, _ = _setup("prefill")
    cu = inputs["cu_seqlens"].tolist()
    assert cu[0] == 0 and cu[-1] == 90 and len(cu) == 3 and cu == sorted(cu)
    norms = inputs["k"].float().norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-2)  # unit keys (bf16 rounding)
    gate = torch.nn.functional.softplus(inputs["a"].float() + inputs["dt_bias"])
    decay = torch.exp(-torch.exp(inputs["A_log"]) * gate)
    assert 0.0 < float(decay.min()) < 0.5 < float(decay.max()) < 1.0  # spread over (0, 1), not degenerate
    assert inputs["scale"] == pytest.approx(0.25) and notes == ["scale: no value given; used 1/sqrt(16)"]


def test_mtp_reads_each_sequence_from_its_pool_slot_and_leaves_the_pool_as_given():
    d, inputs, notes, (ref_out, ref_pool) = _setup("mtp")
    idx = inputs["initial_state_indices"]
    assert idx.dtype == torch.int32 and len(set(idx.tolist())) == 3 and int(idx.max()) < 6
    assert "intermediate_states_buffer" not in inputs and any(n.startswith("intermediate_states_buffer") for n in notes)
    out, pool = ops.backend("recurrent", "gdn").build("gdn", "mtp", inputs, CPU)(inputs)
    assert torch.equal(pool, inputs["initial_state"]) and torch.equal(ref_pool, inputs["initial_state"])
    shuffled = dict(inputs, initial_state_indices=idx.flip(0))  # the wrong slots: a different output
    wrong, _ = ops.backend("recurrent", "gdn").build("gdn", "mtp", shuffled, CPU)(shuffled)
    assert not _check(wrong, pool, ref_out, ref_pool, 5)["passed"]


def test_another_gdn_stage_is_refused_with_one_line(tmp_path, capsys):
    other = gdn("decode")
    other["tags"] = ["stage:verify"]
    path = write(tmp_path / "other.json", other)
    assert main(["run", "--definition", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gdn stage 'verify' is not mapped; accepted: gdn decode, prefill and mtp" in err[0]


def test_the_plan_maps_gdn_onto_the_gdn_variant(tmp_path, capsys):
    path = write(tmp_path / "pre.json", gdn("prefill"))
    assert main(["run", "--definition", str(path), "--batch", "2", "--seq", "40", "--device", "cpu", "--dry-run",
                 "--json", "--trust-reference"]) == 0
    cases = json.loads(capsys.readouterr().out)["cases"]
    assert [(c["variant"], c["backend"]) for c in cases] == [("gdn", b) for b in ("recurrent", "chunked", "reference")]
    assert main(["run", "--definition", str(path), "--backends", "eager", "--dry-run"]) == 2
    assert "accepted: recurrent, chunked, reference" in capsys.readouterr().err


@pytest.mark.slow
def test_a_gdn_prefill_runs_every_backend_through_the_worker(tmp_path, capsys):
    path = write(tmp_path / "pre.json", gdn("prefill"))
    out = tmp_path / "r.jsonl"
    assert main(["run", "--definition", str(path), "--batch", "2", "--seq", "40", "--seq-dist", "uniform:10..70",
                 "--trust-reference", "--device", "cpu", "--time-budget", "0.2", "--threads", "1",
                 "--out", str(out), "-q"]) == 0, capsys.readouterr().err
    recs = [json.loads(x) for x in out.read_text().splitlines() if json.loads(x).get("type") == "record"]
    assert [r["backend"] for r in recs] == ["recurrent", "chunked", "reference"]
    for r in recs:
        RecordModel.model_validate(r)
        check = r["reference_check"]
        assert r["status"] == "ok" and check["passed"], (r["reason"], check)
        assert check["reference"] == ("attnbench-fp64" if r["backend"] == "reference" else "definition")
        assert check["state_max_abs"] is not None and check["state_max_abs"] < check["tolerance"]["state_atol"]
        total = r["workload_axes"]["total_seq_len"]
        assert r["seq_lengths"]["total"] == total and r["flops"] == 7.0 * 16 * 16 * 4 * total
