"""A record's `repro`, run as a user would paste it, reruns the same case: the same case_id
(problem, params, variant, backend, device and environment), backend and problem."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.core import results

pytestmark = pytest.mark.slow  # each run spawns a measuring worker (a few seconds each)

CASE = ("case_id", "variant", "backend", "device", "dtype", "mode", "batch", "heads", "kv_heads", "seq_q", "seq_k",
        "head_dim", "causal", "params", "threads", "inputs")


def _run(argv: list[str], out: Path, capsys) -> list[dict]:
    rc = main([*argv, "--out", str(out), "-q"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return results.read(out)[1]


def _rerun(rec: dict, out: Path, capsys) -> dict:
    argv = shlex.split(rec["repro"])
    assert argv[:2] == ["attnbench", "run"]
    again = _run(argv[1:], out, capsys)
    assert len(again) == 1, [r["case_id"] for r in again]  # exactly that case, nothing more
    return again[0]


def _same_case(first: dict, again: dict) -> None:
    assert {k: again[k] for k in CASE} == {k: first[k] for k in CASE}
    assert again["status"] == first["status"] == "ok"
    assert again["repro"] == first["repro"]


def test_a_variant_with_params_fwd_and_decode_reruns_as_the_same_case(tmp_path, capsys):
    recs = _run(["run", "--variants", "sliding_window", "--backends", "eager", "--param", "window=32",
                 "--param", "softcap=30", "--seq", "64", "--heads", "4", "--kv-groups", "2", "--head-dim", "16",
                 "--causal", "--mode", "fwd,decode", "--time-budget", "1", "--sample-time", "0.3",
                 "--reference-limit", "100000", "--threads", "1", "--device", "cpu"],
                tmp_path / "a.jsonl", capsys)
    assert {r["mode"] for r in recs} == {"fwd", "decode"}
    settings = results.read(tmp_path / "a.jsonl")[0]["settings"]
    assert settings["sample_time"] == 0.3 and settings["reference_limit"] == 100000
    assert all("--sample-time 0.3 --reference-limit 100000" in r["repro"] for r in recs)
    for i, rec in enumerate(recs):
        assert rec["params"]["window"] == 32
        _same_case(rec, _rerun(rec, tmp_path / f"again{i}.jsonl", capsys))
        assert results.read(tmp_path / f"again{i}.jsonl")[0]["settings"] == settings


def test_a_model_preset_case_reruns_as_the_same_case(tmp_path, capsys):
    """The model's problem and params (its scale, here 0.125) come back through the shape options."""
    recs = _run(["run", "--model", "falcon-7b", "--backends", "eager", "--seq", "32", "--time-budget", "1",
                 "--threads", "1", "--device", "cpu"], tmp_path / "m.jsonl", capsys)
    rec = next(r for r in recs if r["status"] == "ok")
    assert rec.get("model") == "falcon-7b" and rec["heads"] == 71 and rec["kv_heads"] == 1
    again = _rerun(rec, tmp_path / "again.jsonl", capsys)
    _same_case(rec, again)
    assert "model" not in again  # rerun as the case alone: the model's annotations are not repeated


def test_a_paged_kv_cache_case_reruns_as_the_same_case(tmp_path, capsys):
    """--kv-layout/--page-size/--seq-dist become the paged variant's params and come back as --param."""
    recs = _run(["run", "--variants", "gqa", "--kv-layout", "paged", "--page-size", "8", "--seq-dist", "24,40",
                 "--batch", "2", "--heads", "4", "--head-dim", "16", "--mode", "decode", "--backends", "eager",
                 "--time-budget", "1", "--threads", "1", "--device", "cpu"], tmp_path / "p.jsonl", capsys)
    rec = next(r for r in recs if r["status"] == "ok")
    assert rec["variant"] == "paged" and rec["params"]["page_size"] == 8 and rec["seq_dist"] == "24,40"
    _same_case(rec, _rerun(rec, tmp_path / "again.jsonl", capsys))
