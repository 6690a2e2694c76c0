"""`run --batch-spec`: one case per spec on the paged variant, what it replaces, the plan's
composition and predictions, and bad input as one line with exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from attnbench.cli import main
from attnbench.core.errors import UsageError
from attnbench.run import forecast as F
from attnbench.run.plan import expand, load_suite, make_sweep
from attnbench.run.worker import peak_model

CPU = torch.device("cpu")
REFS = {"gemm": {"float32": {"flops_per_s": 1e11, "spread": 0.05}}, "copy": {"bytes_per_s": 1e10}}


def test_each_spec_is_one_case_per_backend_on_paged():
    cases = expand([make_sweep(batch_spec=["2q64s96_3q1s80,q8s16", "q8s16"], heads=[4])], CPU)
    assert {c.variant for c in cases} == {"paged"}
    assert len(cases) == 2 * 4  # two specs (one repeated) × eager, sdpa, flex, triton
    by = {(c.problem.param("batch_spec"), c.backend): c for c in cases}
    p = by[("2q64s96_3q1s80", "eager")].problem
    assert (p.batch, p.seq_q, p.seq_k, p.mode, p.causal, p.param("seq_dist")) == (5, 64, 96, "fwd", True, None)
    assert by[("q8s16", "triton")].status in ("unsupported", "unavailable")


def test_layouts_and_gqa_through_paged_and_other_variants_unsupported():
    cases = expand([make_sweep(variants="gqa,flash", batch_spec="q8s16", kv_layout=["paged", "dense"])], CPU)
    paged = [c for c in cases if c.variant == "paged"]
    assert {c.problem.param("kv_layout") for c in paged} == {"paged", "dense"}
    flash = [c for c in cases if c.variant == "flash"]
    assert flash and all(c.status == "unsupported" and "--batch-spec runs on paged" in c.reason for c in flash)
    assert all(c.problem.param("batch_spec") == "q8s16" for c in flash)  # its record still says which batch


@pytest.mark.parametrize("axes,why", [
    ({"batch": 4}, "replaces --batch"), ({"seq": "1k"}, "replaces --seq"), ({"kv_seq": 64}, "replaces --kv-seq"),
    ({"variants": "paged", "seq_dist": "1k,2k"}, "replaces --seq-dist"), ({"mode": "decode"}, "mode fwd only"),
    ({"variants": "paged", "params": {"seq_dist": "1k"}}, "replaces --param seq_dist"),
    ({}, "segment 'q2x'"),
])
def test_what_a_spec_replaces_is_refused(axes, why):
    with pytest.raises(UsageError, match=why):
        make_sweep(batch_spec="q2x" if not axes else "q8s16", **axes)


def test_a_suite_s_lengths_give_way_to_the_spec():
    sweeps, _ = load_suite("quick", batch_spec="q8s16", variants="paged")
    assert all(sw.batch_spec == ("q8s16",) for sw in sweeps)


def test_the_forecast_counts_real_work_and_the_padded_backend_s_rectangle():
    cases = {c.backend: c for c in expand([make_sweep(batch_spec="2q2k_32q1s1k")], CPU)}
    p = cases["eager"].problem
    padded_scores = 4 * p.batch * p.heads * p.seq_q * p.seq_k
    assert peak_model(cases["eager"]) < padded_scores / 4  # eager holds one request's scores at a time
    gemm = REFS["gemm"]["float32"]["flops_per_s"]
    sdpa_s = F.call_seconds(cases["sdpa"], REFS)
    assert sdpa_s >= 4 * p.batch * p.heads * p.seq_q * p.seq_k * p.head_dim / (gemm * 0.5)  # all 34×2k×2k
    assert F.call_seconds(cases["flex"], REFS) < sdpa_s / 10  # the real pairs: ~6 % of the rectangle


@pytest.fixture
def fake_refs(monkeypatch):
    monkeypatch.setattr("attnbench.measure.refs.measure", lambda device, dtypes=("float32",): REFS)


def test_dry_run_json_shows_the_composition(capsys, fake_refs, tmp_path):
    rc = main(["run", "--batch-spec", "2q2k_32q1s1k", "--backends", "eager,sdpa,flex", "--dry-run", "--json",
               "--out", str(tmp_path / "r.jsonl")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    cases = json.loads(cap.out)["cases"]
    assert [c["backend"] for c in cases] == ["eager", "sdpa", "flex"]
    for c in cases:
        assert c["batch_spec"] == "2q2k_32q1s1k" and c["q_tokens"] == 2 * 2048 + 32
        assert c["composition"] == [{"count": 2, "q_len": 2048, "kv_len": 2048},
                                    {"count": 32, "q_len": 1, "kv_len": 1024}]
        assert c["padding_frac"] == pytest.approx(1 - (2 * 2048 * 2048 + 32 * 1024) / (34 * 2048 * 2048))


@pytest.mark.parametrize("args,mention", [
    (["--batch-spec", "2q2k_32q1s1k", "--batch", "4"], "replaces --batch"),
    (["--batch-spec", "2q2k_32q1s1k", "--seq", "1k"], "replaces --seq"),
    (["--batch-spec", "2q2K"], "accepted: SEGMENT[_SEGMENT...]"),
    (["--batch-spec", "q4s2"], "below the query length"),
    (["--batch-spec", "q4", "--mode", "decode"], "mode fwd only"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, mention):
    out = tmp_path / "r.jsonl"
    rc = main(["run", *args, "--dry-run", "--out", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and mention in err[0] and "Traceback" not in err[0]
    assert not out.exists()
