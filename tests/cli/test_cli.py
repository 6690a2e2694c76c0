"""The command line through attnbench.cli.main: JSON listings, one-line usage errors with exit
code 2 (never a traceback), and an end-to-end run whose JSONL reads back."""

import json

import pytest

from attnbench.cli import main
from attnbench.core import results
from attnbench.variants import registry


def test_list_json(capsys):
    assert main(["list", "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == registry.names()
    for r in rows:
        assert set(r) == {"name", "family", "description", "complexity", "backends", "params"}
        v = registry.get(r["name"])
        assert r["params"] == v.defaults | v.options  # options (e.g. softcap) listed at their off value
        assert set(r["complexity"]) == {"time", "memory"} and r["complexity"]["time"].startswith("O(")
        assert r["description"] and r["backends"]
        for b in r["backends"]:
            assert set(b) == {"name", "available", "reason", "params", "complexity"}
            assert b["available"] is (b["reason"] is None)
            assert b["params"] == registry.get(r["name"]).backend(b["name"]).params
        names = [b["name"] for b in r["backends"]]
        assert "fault" not in names  # test-only backends are never listed
    mha = next(r for r in rows if r["name"] == "mha")
    by_name = {b["name"]: b for b in mha["backends"]}
    assert by_name["sdpa"]["available"] and not by_name["sdpa-cudnn"]["available"]
    assert "CUDA" in by_name["sdpa-cudnn"]["reason"]
    assert by_name["flex"]["params"] == {"block_size": 128} and by_name["sdpa"]["params"] == {}


def test_list_table(capsys):
    assert main(["list", "--device", "cpu"]) == 0
    assert "mha" in capsys.readouterr().out


def test_env_json(capsys):
    assert main(["env", "--json", "--device", "cpu"]) == 0
    env = json.loads(capsys.readouterr().out)
    for key in ("attnbench", "git_commit", "python", "platform", "torch", "triton", "cuda", "device",
                "cpu_model", "cpu_count", "threads", "device_name", "driver", "nvml"):
        assert key in env, key
    assert env["device"] == "cpu" and env["threads"] >= 1


BAD = [
    (["--seq", "1k.."], "needs both ends"),
    (["--seq", "0"], "at least 1"),
    (["--seq", "64q"], "bad --seq value '64q'"),
    (["--seq", "8k..1k"], "must not be below"),
    (["--kv-seq", "x"], "--kv-seq"),
    (["--heads", "0"], "--heads"),
    (["--kv-heads", "2", "--kv-groups", "4"], "mutually exclusive"),
    (["--variants", "flsh"], "did you mean"),
    (["--variants", "mha", "--backends", "nope", "--seq", "64"], "unknown backend 'nope'"),
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["--mode", "back"], "unknown mode"),
    (["--suite", "missing-suite.toml"], "does not exist"),
    (["--suite", "quik"], "did you mean"),
    (["--time-budget", "-1"], "--time-budget"),
    (["--time-budget", "0"], "--time-budget"),
    (["--threads", "0"], "--threads"),
    (["--device", "tpu"], "unknown device"),
    (["--heads", "x"], "--heads"),
    (["--no-such-flag"], "No such option"),
]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    return lines[0]


@pytest.mark.parametrize("args,match", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, match):
    assert main(["run", *args, "--out", str(tmp_path / "r.jsonl")]) == 2
    assert match in one_error_line(capsys)
    assert not (tmp_path / "r.jsonl").exists()


def test_out_in_a_missing_directory(capsys, tmp_path):
    assert main(["run", "--variants", "mha", "--seq", "64", "--out", str(tmp_path / "no" / "r.jsonl")]) == 2
    assert "does not exist" in one_error_line(capsys)


def test_existing_out_needs_force_or_resume(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("keep me\n")
    assert main(["run", "--variants", "mha", "--seq", "64", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "--resume" in line and "--force" in line
    assert out.read_text() == "keep me\n"


def test_unknown_command(capsys):
    assert main(["nosuchcommand"]) == 2
    one_error_line(capsys)


def test_kv_heads_no_case_can_use_is_a_usage_error_before_work(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    rc = main(["run", "--variants", "gqa", "--backends", "sdpa", "--kv-heads", "3", "--heads", "8", "--seq", "64",
               "--out", str(out)])
    assert rc == 2
    assert "no case can run" in one_error_line(capsys) and not out.exists()


def test_kv_heads_not_dividing_some_heads_is_an_unsupported_record(capsys, tmp_path):
    out = tmp_path / "r.jsonl"
    rc = main(["run", "--variants", "gqa", "--backends", "sdpa", "--kv-heads", "3", "--heads", "6,8", "--seq", "64",
               "--time-budget", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    _, recs = results.read(out)
    by = {r["heads"]: r for r in recs}
    assert by[6]["status"] == "ok"
    assert by[8]["status"] == "unsupported" and "kv_heads=3 must divide heads=8" in by[8]["reason"]


def test_header_records_the_command_given_to_main(tmp_path):
    out = tmp_path / "r.jsonl"
    args = ["run", "--variants", "gqa", "--backends", "sdpa", "--kv-heads", "2", "--seq", "64", "--time-budget", "2",
            "--out", str(out)]
    assert main(args) == 0
    header, _ = results.read(out)
    assert header["command"] == ["attnbench", *args]


def test_run_end_to_end(capsys, tmp_path):
    out = tmp_path / "x.jsonl"
    rc = main(["run", "--variants", "mha,gqa", "--backends", "sdpa,eager", "--seq", "128,256",
               "--time-budget", "5", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err
    header, recs = results.read(out)
    assert header["env"]["device"] == "cpu" and header["refs"]["gemm"]["float32"]["flops_per_s"] > 0
    assert header["refs"]["copy"]["bytes_per_s"] > 0
    keys = sorted((r["variant"], r["backend"], r["seq_q"]) for r in recs)
    assert keys == sorted((v, b, s) for v in ("mha", "gqa") for b in ("sdpa", "eager") for s in (128, 256))
    for r in recs:
        assert r["status"] == "ok", (r["variant"], r["backend"], r["reason"])
        assert set(results.RECORD_FIELDS) <= set(r)
        assert r["latency_ms"]["median"] > 0 and r["latency_ms"]["n"] == len(r["samples_ms"])
        assert r["peak_mem_bytes"] is not None and r["mem_source"] == "cpu-vmhwm"
        assert r["flops"] == 4 * 8 * r["seq_q"] * r["seq_k"] * 64 and r["tflops"] > 0
        assert r["error"]["rel_l2"] < 1e-5 and r["roofline_frac"] > 0
        assert r["kv_heads"] == (8 if r["variant"] == "mha" else 2)
    assert "mha" in captured.out  # the table
    df = results.to_frame(recs)
    assert len(df) == 8 and df["latency_median"].gt(0).all()


def _captured_budget(monkeypatch, tmp_path, *args) -> float:
    """The time budget `run` hands to session.run_sweep (the run itself is not started)."""
    seen = {}

    def fake_run_sweep(sweeps, settings, out, **kw):
        seen["settings"] = settings
        return [], False

    monkeypatch.setattr("attnbench.run.session.run_sweep", fake_run_sweep)
    assert main(["run", *args, "--out", str(tmp_path / "r.jsonl")]) == 0
    return seen["settings"].time_budget


def test_suite_time_budget_applies_unless_given(monkeypatch, tmp_path):
    assert _captured_budget(monkeypatch, tmp_path, "--suite", "quick") == 13  # quick.toml: time_budget = 13
    assert _captured_budget(monkeypatch, tmp_path, "--suite", "quick", "--time-budget", "5") == 5
    assert _captured_budget(monkeypatch, tmp_path, "--variants", "mha", "--seq", "64") == 30  # the default


def test_explicit_time_budget_equal_to_the_default_wins(monkeypatch, tmp_path):
    assert _captured_budget(monkeypatch, tmp_path, "--suite", "quick", "--time-budget", "30") == 30
