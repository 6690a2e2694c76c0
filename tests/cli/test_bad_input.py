"""Bad input, everywhere: one line on stderr saying what was wrong and what is accepted,
exit code 2 (3 for the regression gate's usage errors, as its exit codes document), no
traceback, and no file written or damaged."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.core.results import Writer, make_header
from attnbench.core.safe_io import hold_lock

# The records and files every bad-input test starts from live in tests/conftest.py (other folders' tests
# use them too): `from conftest import ...` works from any test folder.
from conftest import ENV, valid_record  # noqa: E402
from conftest import results_file as _results_file

SUITES = {  # suite files with values of the wrong type or out of range
    "tb_abc.toml": 'time_budget = "abc"\n[[sweep]]\nvariants = ["mha"]\n',
    "tb_inf.toml": 'time_budget = inf\n[[sweep]]\nvariants = ["mha"]\n',
    "tb_neg.toml": 'time_budget = -3\n[[sweep]]\nvariants = ["mha"]\n',
    "device5.toml": 'device = 5\n[[sweep]]\nvariants = ["mha"]\n',
    "sweep12.toml": "sweep = [1, 2]\n",
    "rounds0.toml": 'rounds = 0\n[[sweep]]\nvariants = ["mha"]\n',
    "rounds_str.toml": 'rounds = "3"\n[[sweep]]\nvariants = ["mha"]\n',
    "heads_str.toml": '[[sweep]]\nvariants = ["mha"]\nheads = ["x"]\n',
    "causal_str.toml": '[[sweep]]\nvariants = ["mha"]\ncausal = "yes"\n',
    "param_nan.toml": '[[sweep]]\nvariants = ["performer"]\nparams = { eps = nan }\n',
    "param_table.toml": '[[sweep]]\nvariants = ["sliding_window"]\nparams = { window = { a = 1 } }\n',
    "nosweep.toml": 'description = "no sweeps"\n',
    "variants_int.toml": "[[sweep]]\nvariants = 5\n",
    "mode_modes.toml": '[[sweep]]\nvariants = ["mha"]\nmode = "fwd"\nmodes = ["decode"]\n',
}


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notjsonl.txt").write_text("hello, not results\n")
    (tmp_path / "foreign.jsonl").write_text('{"some": "other tool"}\n')
    (tmp_path / "broken.toml").write_text("[[sweep]\nvariants = \n")
    (tmp_path / "unknownkey.toml").write_text('[[sweep]]\nvariants = ["mha"]\nbogus = 1\n')
    (tmp_path / "existing.jsonl").write_text("precious\n")
    with Writer(tmp_path / "good.jsonl", make_header(["test"], {"device": "cpu"}, None)):
        pass
    (tmp_path / "ff.toml").write_bytes(b'[[sweep]]\nvariants = ["mha"]\n# \xff\n')
    (tmp_path / "ff.jsonl").write_bytes(b"\xff\xfe\n")
    (tmp_path / "empty.jsonl").write_text("")
    for name, text in SUITES.items():
        (tmp_path / name).write_text(text)
    _results_file(tmp_path / "rec.jsonl", valid_record())
    (tmp_path / "adir").mkdir()
    (tmp_path / "report.md").write_text("an earlier report\n")
    _results_file(
        tmp_path / "other_env.jsonl",
        valid_record(case_id="fedcba9876543210"),
        header=make_header(["test"], ENV | {"threads": 64}, None),
    )
    bad = {
        "bad_seq_q": {"seq_q": "abc"},
        "bad_samples": {"samples_ms": {}},
        "bad_causal": {"causal": "yes"},
        "bad_threads": {"threads": 0},
        "bad_params": {"params": [1]},
        "bad_status": {"status": "fine"},
        "bad_latency": {"latency_ms": {"median": "fast"}},
        "bad_neg": {"peak_mem_bytes": -5},
        "bad_batch_float": {"batch": 1.5},
        "bad_reason": {"reason": 7},
    }
    for name, change in bad.items():
        _results_file(tmp_path / f"{name}.jsonl", valid_record(**change))
    _results_file(
        tmp_path / "bad_nan.jsonl", raw=json.dumps(valid_record()).replace('"tflops": null', '"tflops": NaN') + "\n"
    )
    _results_file(
        tmp_path / "bad_inf.jsonl", raw=json.dumps(valid_record()).replace('"gbps": null', '"gbps": Infinity') + "\n"
    )
    rec = valid_record()
    del rec["samples_ms"]
    _results_file(tmp_path / "bad_missing.jsonl", rec)
    _results_file(tmp_path / "schema2.jsonl", header=make_header(["test"], ENV, None) | {"schema_version": 2})
    _results_file(tmp_path / "notobj.jsonl", raw="[1, 2]\n")
    (tmp_path / "rep_dir").mkdir()
    (tmp_path / "rep_dir" / "keep.txt").write_text("not a report\n")
    with hold_lock(tmp_path / "locked.jsonl"):  # another writer holds it for the whole test
        yield tmp_path


# (arguments, what the message must mention, expected exit code)
CASES = [
    (["run", "--seq", "1k.."], "both ends", 2),
    (["run", "--seq", "0"], "at least 1", 2),
    (["run", "--seq", "64q"], "accepted", 2),
    (["run", "--seq", "8k..1k"], "must not be below", 2),
    (["run", "--seq", ""], "accepted", 2),
    (["run", "--heads", "0"], "integers >= 1", 2),
    (["run", "--heads", "x"], "integers", 2),
    (["run", "--kv-heads", "2", "--kv-groups", "4"], "mutually exclusive", 2),
    (["run", "--variants", "mah"], "did you mean", 2),
    (["run", "--variants", "mha", "--backends", "sdpx"], "did you mean", 2),
    (["run", "--dtype", "fp8"], "accepted: float32", 2),
    (["run", "--mode", "sideways"], "accepted: fwd", 2),
    (["run", "--device", "tpu"], "accepted: auto", 2),
    (["run", "--suite", "missing.toml"], "does not exist", 2),
    (["run", "--suite", "broken.toml"], "not valid TOML", 2),
    (["run", "--suite", "unknownkey.toml"], "unknown sweep key 'bogus'", 2),
    (["run", "--suite", "nosuchsuite"], "unknown suite", 2),
    (["run", "--time-budget", "-1"], "positive", 2),
    (["run", "--out", "nodir/x.jsonl"], "does not exist", 2),
    (["run", "--out", "existing.jsonl"], "already exists", 2),
    (["run", "--threads", "0"], "at least 1", 2),
    (["run", "--executor", "slurm"], "accepted: local, ray", 2),
    (["run", "--shard", "5/4"], "K must be in", 2),
    (["run", "--world-size", "0"], "at least 1", 2),
    (["run", "--bogus-flag"], "No such option", 2),
    (["run", "--variants", "mha", "--param", "window=4"], "variant 'mha' has no parameter 'window'", 2),
    (["run", "--variants", "sliding_window", "--param", "window=wide"], "accepted: a int", 2),
    (["run", "--variants", "performer", "--param", "eps"], "name=value", 2),
    (["run", "--rounds", "0"], "--rounds = 0 is not accepted; accepted: an integer, at least 1", 2),
    (["run", "--rounds", "2", "--executor", "ray"], "does not combine with --executor ray", 2),
    (["frobnicate"], "No such command", 2),
    (["report", "notjsonl.txt", "--out", "rep"], "not JSON", 2),
    (["report", "missing.jsonl", "--out", "rep"], "does not exist", 2),
    (["report", "foreign.jsonl", "--out", "rep"], "not an attnbench", 2),
    (["show", "notjsonl.txt"], "not JSON", 2),
    (["show-pattern", "nosuch"], "unknown variant", 2),
    (["show-pattern", "mha"], "picture", 2),
    (["frontier", "--memory-budget", "lots"], "accepted", 2),
    (["frontier", "--axis", "heads"], "accepted: seq", 2),
    (["frontier", "--mode", "sideways"], "accepted", 2),
    (["check", "--variants", "nosuch"], "unknown variant", 2),
    (["check", "--dtype", "fp8"], "accepted", 2),
    (["profile", "--variants", "mha", "--backends", "nosuch"], "accepted", 2),
    (["profile", "--variants", "mha", "--kv-heads", "3"], "kv_heads", 2),
    (["merge", "good.jsonl", "--out", "nodir/all.jsonl"], "does not exist", 2),
    (["merge", "notjsonl.txt", "--out", "all.jsonl"], "not JSON", 2),
    (["kernels", "compile", "--arch", "sm_70"], "accepted: sm_80", 2),
    (["compare", "missing.jsonl", "good.jsonl"], "missing.jsonl", 3),
    (["compare", "good.jsonl", "good.jsonl", "--threshold", "lots"], "threshold", 3),
    (["compare", "notjsonl.txt", "good.jsonl"], "notjsonl.txt", 3),
    # --- numbers that are not finite, wrong types, locks, markup, gate usage codes
    (["run", "--time-budget", "nan"], "finite positive", 2),
    (["run", "--time-budget", "inf"], "finite positive", 2),
    (["run", "--time-budget", "-inf"], "finite positive", 2),
    (["run", "--time-budget", "0"], "finite positive", 2),
    (["run", "--time-budget", "abc"], "--time-budget", 2),
    (["run", "--threads", "-3"], "at least 1", 2),
    (["run", "--threads", "x"], "--threads", 2),
    (["run", "--rounds", "x"], "--rounds", 2),
    (["run", "--world-size", "-1"], "at least 1", 2),
    (["run", "--variants", ""], "no variants", 2),
    (["run", "--variants", "performer", "--param", "eps=nan"], "finite number", 2),
    (["run", "--variants", "performer", "--param", "eps=inf"], "finite number", 2),
    (["run", "--variants", "performer", "--param", "eps=-1"], "from 0", 2),
    (["run", "--variants", "rope", "--param", "base=nan"], "finite number", 2),
    (["run", "--variants", "sliding_window", "--param", "window=-5"], "from 0", 2),
    (["run", "--variants", "sliding_window", "--param", "window=1e400"], "accepted: a int", 2),
    (["run", "--variants", "sliding_window", "--param", "window=2.5"], "accepted: a int", 2),
    (["run", "--out", "no[red]dir/x.jsonl"], "no[red]dir", 2),
    (["run", "--out", "."], "is a directory", 2),
    (["run", "--out", "locked.jsonl"], "pid", 2),
    (["run", "--out", "notjsonl.txt", "--resume"], "not JSON", 2),
    (["run", "--out", "bad_seq_q.jsonl", "--resume"], "seq_q", 2),
    (["run", "--suite", "tb_abc.toml"], "time_budget", 2),
    (["run", "--suite", "tb_inf.toml"], "finite positive", 2),
    (["run", "--suite", "tb_neg.toml"], "finite positive", 2),
    (["run", "--suite", "device5.toml"], "device", 2),
    (["run", "--suite", "sweep12.toml"], "dictionary", 2),
    (["run", "--suite", "rounds0.toml"], "rounds", 2),
    (["run", "--suite", "rounds_str.toml"], "rounds", 2),
    (["run", "--suite", "heads_str.toml"], "heads", 2),
    (["run", "--suite", "causal_str.toml"], "causal", 2),
    (["run", "--suite", "param_nan.toml"], "params.eps", 2),
    (["run", "--suite", "param_table.toml"], "params.window", 2),
    (["run", "--suite", "nosweep.toml"], "no [[sweep]]", 2),
    (["run", "--suite", "variants_int.toml"], "variants", 2),
    (["run", "--suite", "ff.toml"], "not UTF-8", 2),
    (["run", "--kv-seq", "0"], "at least 1", 2),
    (["run", "--batch", "0"], "integers >= 1", 2),
    (["run", "--head-dim", "-4"], "integers >= 1", 2),
    (["run", "--address", "127.0.0.1:6379"], "--executor ray", 2),
    (["run", "--shard", "a/b"], "accepted: K/N", 2),
    (["run", "--shard", "1/0"], "K must be in", 2),
    (["run", "--profile-dir", "nodir/x"], "does not exist", 2),
    (["show", "bad_seq_q.jsonl"], "field 'seq_q' = 'abc'", 2),
    (["show", "bad_samples.jsonl"], "field 'samples_ms' = {}", 2),
    (["show", "bad_causal.jsonl"], "causal", 2),
    (["show", "bad_threads.jsonl"], "threads", 2),
    (["show", "bad_params.jsonl"], "params", 2),
    (["show", "bad_status.jsonl"], "unknown status", 2),
    (["show", "bad_latency.jsonl"], "latency_ms.median", 2),
    (["show", "bad_neg.jsonl"], "peak_mem_bytes", 2),
    (["show", "bad_batch_float.jsonl"], "batch", 2),
    (["show", "bad_reason.jsonl"], "reason", 2),
    (["show", "bad_nan.jsonl"], "finite", 2),
    (["show", "bad_inf.jsonl"], "finite", 2),
    (["show", "bad_missing.jsonl"], "lacks samples_ms", 2),
    (["show", "schema2.jsonl"], "schema_version", 2),
    (["show", "notobj.jsonl"], "record", 2),
    (["show", "ff.jsonl"], "cannot read", 2),
    (["show", "empty.jsonl"], "empty", 2),
    (["show", "."], "is a directory", 2),
    (["report", "bad_seq_q.jsonl", "--out", "rep"], "seq_q", 2),
    (["report", "bad_samples.jsonl", "--out", "rep"], "samples_ms", 2),
    (["report", "rec.jsonl", "--out", "existing.jsonl"], "is a file", 2),
    (["report", "rec.jsonl", "--out", "nodir/rep"], "does not exist", 2),
    (["report", "rec.jsonl", "--out", "rep_dir"], "holds no report", 2),
    (["report", "rec.jsonl", "--out", "no[red]dir/rep"], "no[red]dir", 2),
    (["report", "rec.jsonl", "--out", "locked.jsonl"], "pid", 2),
    (["merge", "bad_seq_q.jsonl", "--out", "m.jsonl"], "seq_q", 2),
    (["merge", "rec.jsonl", "--out", "existing.jsonl"], "already exists", 2),
    (["merge", "rec.jsonl", "other_env.jsonl", "--out", "m.jsonl"], "another environment", 2),
    (["merge", "rec.jsonl", "--out", "locked.jsonl"], "pid", 2),
    (["merge", "--out", "m.jsonl"], "Missing argument", 2),
    (["check", "--backends", "nosuch"], "unknown backend", 2),
    (["check", "--backends", ""], "unknown backend", 2),
    (["check", "--variants", ""], "names no variant", 2),
    (["check", "--variants", ","], "names no variant", 2),
    (["check", "--variants", "mha", "--backends", "peer:linformer"], "unknown backend", 2),
    (["frontier", "--call-limit", "nan"], "finite positive", 2),
    (["frontier", "--call-limit", "inf"], "finite positive", 2),
    (["frontier", "--memory-budget", "0MiB"], "positive", 2),
    (["frontier", "--memory-budget", "nanGiB"], "accepted", 2),
    (["frontier", "--memory-budget", "-1GiB"], "accepted", 2),
    (["frontier", "--variants", "nosuch"], "unknown variant", 2),
    (["frontier", "--start", "0"], "at least 1", 2),
    (["frontier", "--max-seq", "abc"], "accepted", 2),
    (["frontier", "--out", "nodir/f.json"], "does not exist", 2),
    (["frontier", "--dtype", "fp8"], "accepted", 2),
    (["show-pattern", "sliding_window", "--out", "x.jpg"], ".png", 2),
    (["show-pattern", "sliding_window", "--out", "nodir/x.png"], "does not exist", 2),
    (["show-pattern", "sliding_window", "--seq", "abc"], "--seq", 2),
    (["profile", "--variants", "nosuch"], "unknown variant", 2),
    (["profile", "--variants", "mha", "--out", "existing.jsonl"], "is a file", 2),
    (["profile", "--variants", "mha", "--dtype", "fp8"], "accepted", 2),
    (["list", "--device", "tpu"], "accepted: auto", 2),
    (["env", "--device", "tpu"], "accepted: auto", 2),
    (["env", "--bogus"], "No such option", 2),
    (["kernels", "frob"], "No such command", 2),
    (["compare", "good.jsonl", "rec.jsonl"], "no records", 3),
    (["compare", "bad_seq_q.jsonl", "rec.jsonl"], "seq_q", 3),
    (["compare", "rec.jsonl", "bad_nan.jsonl"], "finite", 3),
    (["compare", "rec.jsonl", "rec.jsonl", "--alpha", "nan"], "alpha", 3),
    (["compare", "rec.jsonl", "rec.jsonl", "--bogus"], "No such option", 3),
    (["compare", "rec.jsonl"], "Missing argument", 3),
    (["compare", "rec.jsonl", "rec.jsonl", "--format", "xml"], "format", 3),
    (["compare", "rec.jsonl", "rec.jsonl", "--report", "x.pdf"], "suffix", 3),
    (["compare", "rec.jsonl", "rec.jsonl", "--report", "nodir/x.md"], "does not exist", 3),
    (["compare", "rec.jsonl", "rec.jsonl", "--metric", "speed"], "metric", 3),
    (["compare", "rec.jsonl", "rec.jsonl", "--warn", "lots"], "warn", 3),
    (["gate", "--baseline", "missing.jsonl"], "missing.jsonl", 3),
    (["gate"], "Missing option", 3),
    (["gate", "--baseline", "rec.jsonl", "--bogus"], "No such option", 3),
    (["baseline", "save", "--runs", "0"], "at least 1", 3),
    (["baseline", "save", "--suite", "nosuchsuite"], "unknown suite", 3),
    (["baseline", "save", "--suite", "tb_abc.toml"], "time_budget", 3),
    (["baseline", "path", "--threads", "0"], "at least 1", 3),
    (["baseline", "save", "--suite", "quick", "--runs", "1", "--out", "locked.jsonl"], "pid", 3),
    (["baseline", "frob"], "No such command", 3),
    (["ab", "--ref", "HEAD", "--rounds", "0"], "at least 1", 3),
    (["ab", "--ref", "HEAD", "--threads", "0"], "at least 1", 3),
    (["ab"], "Missing option", 3),
    # one vocabulary, one settings object: values no case can use, files not to overwrite, devices
    (["show-pattern", "sliding_window", "--seq", "100000"], "at most 8k", 2),
    (["merge", "rec.jsonl", "--out", "/dev/full"], "no space", 4),
    (["run", "--suite", "mode_modes.toml"], "both mode and modes", 2),
    (["merge", "rec.jsonl", "--out", "adir"], "is a directory", 2),
    (["run", "--variants", "mha", "--seq", "64", "--profile-dir", "existing.jsonl"], "is a file", 2),
    (["run", "--variants", "gqa", "--kv-heads", "3", "--seq", "64"], "no case can run", 2),
    (["run", "--variants", "sliding_window", "--param", "sink_logit=maybe", "--seq", "64"], "sink_logit", 2),
    (["run", "--variants", "sliding_window", "--param", "window=0", "--seq", "64"], "window", 2),
    (["run", "--variants", "mla", "--param", "form=weird", "--seq", "64"], "unknown form", 2),
    (["run", "--model", "llama-3-8b", "--heads", "12", "--seq", "64"], "must divide heads=12", 2),
    (["run", "--variants", "mha", "--seq", "64", "--csv", "existing.jsonl"], "--force", 2),
    (["compare", "rec.jsonl", "rec.jsonl", "--report", "report.md"], "--force", 3),
    (["run", "--variants", "gqa", "--kv-layout", "paged", "--kv-layout", "ragged"], "accepted: dense, paged", 2),
    (["run", "--variants", "mha", "--page-size", "16"], "go with --kv-layout", 2),
    (["run", "--variants", "mha", "--backend-file", "no-such-kernel.py"], "cannot be read", 2),
    (["run", "--json", "--format", "csv"], "disagree", 2),
    (["list", "--format", "markdown"], "accepted: table, json", 2),
    (["profile", "--variants", "mha,gqa"], "one case", 2),
    (["frontier", "--heads", "8,16"], "one --heads", 2),
    (["frontier", "--memory-budget", "lots"], "accepted", 2),
]


@pytest.mark.parametrize("args,mention,code", CASES, ids=[" ".join(c[0])[:50] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(workdir, capsys, args, mention, code):
    before = _snapshot(workdir)
    rc = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert mention.lower() in lines[0].lower(), lines[0]
    assert _snapshot(workdir) == before


def test_the_table_covers_every_command_with_at_least_a_hundred_cases():
    assert len(CASES) >= 100
    commands = {c[0][0] for c in CASES}
    assert {
        "run",
        "report",
        "show",
        "show-pattern",
        "frontier",
        "check",
        "profile",
        "merge",
        "kernels",
        "compare",
        "gate",
        "baseline",
        "ab",
        "list",
        "env",
    } <= commands


def test_bad_input_table_is_printable_for_the_docs(capsys, workdir):
    """Not an assertion on wording: collects (command, message) pairs for docs/bad-input.md."""
    rows = []
    for args, _, code in CASES:
        rc = main(args)
        rows.append({"args": " ".join(args), "exit": rc, "message": capsys.readouterr().err.strip()})
    assert all(r["exit"] == c for r, (_, _, c) in zip(rows, CASES))
    if os.environ.get("ATTNBENCH_WRITE_BAD_INPUT_TABLE"):
        Path(os.environ["ATTNBENCH_WRITE_BAD_INPUT_TABLE"]).write_text(json.dumps(rows, indent=1))
