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


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


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
    return tmp_path


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
    (["run", "--rounds", "0"], "--rounds must be at least 1", 2),
    (["run", "--rounds", "2", "--executor", "ray"], "does not combine with --executor ray", 2),
    (["frobnicate"], "No such command", 2),
    (["report", "notjsonl.txt", "--out", "rep"], "not JSON", 2),
    (["report", "missing.jsonl", "--out", "rep"], "does not exist", 2),
    (["report", "foreign.jsonl", "--out", "rep"], "not an attnbench", 2),
    (["show", "notjsonl.txt"], "not JSON", 2),
    (["show-pattern", "nosuch"], "unknown variant", 2),
    (["show-pattern", "mha"], "picture", 2),
    (["frontier", "--budget", "lots"], "accepted", 2),
    (["frontier", "--axis", "heads"], "accepted: seq", 2),
    (["frontier", "--mode", "sideways"], "accepted", 2),
    (["check", "--variants", "nosuch"], "unknown variant", 2),
    (["check", "--dtype", "fp8"], "accepted", 2),
    (["profile", "--variant", "mha", "--backend", "nosuch"], "accepted", 2),
    (["profile", "--variant", "mha", "--kv-heads", "3"], "kv_heads", 2),
    (["merge", "good.jsonl", "--out", "nodir/all.jsonl"], "does not exist", 2),
    (["merge", "notjsonl.txt", "--out", "all.jsonl"], "not JSON", 2),
    (["kernels", "compile", "--arch", "sm_70"], "accepted: sm_80", 2),
    (["compare", "missing.jsonl", "good.jsonl"], "missing.jsonl", 3),
    (["compare", "good.jsonl", "good.jsonl", "--threshold", "lots"], "threshold", 3),
    (["compare", "notjsonl.txt", "good.jsonl"], "notjsonl.txt", 3),
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


def test_the_table_covers_every_command_with_at_least_thirty_cases():
    assert len(CASES) >= 30
    commands = {c[0][0] for c in CASES}
    assert {"run", "report", "show", "show-pattern", "frontier", "check", "profile", "merge",
            "kernels", "compare"} <= commands


def test_bad_input_table_is_printable_for_the_docs(capsys, workdir):
    """Not an assertion on wording: collects (command, message) pairs for docs/bad-input.md."""
    rows = []
    for args, _, code in CASES:
        rc = main(args)
        rows.append({"args": " ".join(args), "exit": rc, "message": capsys.readouterr().err.strip()})
    assert all(r["exit"] == c for r, (_, _, c) in zip(rows, CASES))
    if os.environ.get("ATTNBENCH_WRITE_BAD_INPUT_TABLE"):
        Path(os.environ["ATTNBENCH_WRITE_BAD_INPUT_TABLE"]).write_text(json.dumps(rows, indent=1))
