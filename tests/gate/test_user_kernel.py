"""A user's own kernel end to end, through real worker processes (which import the file by path):
`run --backend-file` checks it, times it and refuses a wrong one before timing; `recommend` ranks
it with ours; `baseline save` and `gate` gate it — the same file passes, a deliberately slowed
version of it (a 30 ms busy-wait per call on a call of well under 1 ms: a huge effect, asserted
as a verdict, never as a timing) is the gate's regression (exit 1) with the changed file named,
and a wrong version fails the gate as an error (exit 2). Real runs: marked slow."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from user_files import WRONG, good

from attnbench.cli import main
from attnbench.core.results import read
from attnbench.variants import registry

SUITE = """description = "a user's kernel"
time_budget = 4

[[sweep]]
variants = ["mha"]
backends = ["my-softmax"]
seq = 64
heads = 2
head_dim = 32
"""


@pytest.fixture(autouse=True)
def built_in_catalogue():
    registry.drop_added_backends()
    yield
    registry.drop_added_backends()


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_run_checks_times_and_refuses_and_recommend_ranks_a_users_kernel(tmp_path, capsys):
    (tmp_path / "good.py").write_text(good())
    (tmp_path / "wrong.py").write_text(WRONG)
    out = tmp_path / "r.jsonl"
    rc = main(["run", "--variants", "mha", "--backends", "sdpa,my-softmax,my-wrong", "--seq", "64", "--heads", "2",
               "--head-dim", "32", "--time-budget", "2", "--backend-file", str(tmp_path / "good.py"),
               "--backend-file", str(tmp_path / "wrong.py"), "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    header, records = read(out)  # validated: the `wrong` status and the new fields included
    by = {r["backend"]: r for r in records}
    mine, wrong = by["my-softmax"], by["my-wrong"]
    assert mine["status"] == "ok" and mine["latency_ms"]["n"] >= 1 and mine["precheck"]["passed"] is True
    assert mine["precheck"]["rel_l2"] <= mine["precheck"]["budget"]
    sha = hashlib.sha256((tmp_path / "good.py").read_bytes()).hexdigest()
    assert mine["backend_source"] == {"kind": "file", "where": str((tmp_path / "good.py").resolve()), "sha256": sha}
    assert header["catalogue"]["mha"]["backends"]["my-softmax"]["source"]["sha256"] == sha
    assert str((tmp_path / "good.py").resolve()) in header["settings"]["backend_files"]
    assert wrong["status"] == "wrong" and "refused before timing" in wrong["reason"]
    assert wrong["latency_ms"] is None and wrong["samples_ms"] is None and wrong["error"]["rel_l2"] > 1
    assert "sdpa" in by and by["sdpa"].get("precheck") is None  # ours are not re-checked in the run
    capsys.readouterr()
    assert main(["recommend", str(out), "--format", "json"]) == 0
    (pick,) = json.loads(capsys.readouterr().out)
    assert {pick["backend"], pick["runner_up"]} == {"sdpa", "my-softmax"}  # ranked like ours, whichever wins
    assert pick["failed"][0]["backend"].endswith("my-wrong") and pick["failed"][0]["status"] == "wrong"


@pytest.mark.slow
def test_gate_passes_the_same_kernel_and_fails_a_slowed_or_wrong_one(tmp_path, capsys, one_thread):
    suite, kernel, base = tmp_path / "mine.toml", tmp_path / "mine.py", tmp_path / "base.jsonl"
    suite.write_text(SUITE)
    kernel.write_text(good())
    common = ["--suite", str(suite), "--backend-file", str(kernel), "--threads", "1"]
    assert main(["baseline", "save", *common, "--runs", "1", "--out", str(base)]) == 0, capsys.readouterr().err

    def gate(tag: str) -> tuple[int, dict]:
        capsys.readouterr()
        rc = main(["gate", *common, "--baseline", str(base), "--threshold", "90%", "--json",
                   "--out", str(tmp_path / f"gate-{tag}.jsonl"), "--force"])
        return rc, json.loads(capsys.readouterr().out)

    rc, report = gate("same")
    assert rc == 0, report
    assert not any("changed" in (c.get("note") or "") for c in report["cases"])
    kernel.write_text(good(delay_ms=30))  # the same kernel, deliberately slowed
    rc, report = gate("slow")
    assert rc == 1, report
    (case,) = report["cases"]
    assert case["verdict"] == "regression" and "file changed since the baseline" in case["note"]
    kernel.write_text(WRONG.replace("my-wrong", "my-softmax"))  # now wrong: refused, never timed
    rc, report = gate("wrong")
    assert rc == 2, report
    (case,) = report["cases"]
    assert case["verdict"] == "wrong" and "refused before timing" in case["why"], case  # never timed, never compared


def test_ab_takes_an_in_repo_kernel_from_each_sides_tree(tmp_path, monkeypatch):
    from attnbench.core.errors import UsageError
    from attnbench.gate import ab

    repo, export = tmp_path / "repo", tmp_path / "export"
    (repo / "kernels").mkdir(parents=True)
    (export / "kernels").mkdir(parents=True)
    (repo / "kernels" / "mine.py").write_text(good())
    (export / "kernels" / "mine.py").write_text(good(delay_ms=1))
    outside = tmp_path / "elsewhere.py"
    outside.write_text(good())
    assert ab.in_export((repo / "kernels" / "mine.py").resolve(), repo, export, "HEAD~1") == export / "kernels/mine.py"
    assert ab.in_export(outside.resolve(), repo, export, "HEAD~1") == outside.resolve()
    (repo / "kernels" / "new.py").write_text(good())
    with pytest.raises(UsageError, match="'kernels/new.py' is not in revision HEAD~1"):
        ab.in_export((repo / "kernels" / "new.py").resolve(), repo, export, "HEAD~1")
    seen = []

    class Done:
        returncode = 0

    monkeypatch.setattr(ab.subprocess, "run", lambda cmd, **kw: seen.append(cmd) or Done())
    monkeypatch.setattr(ab, "load_run", lambda out: out)
    side = ab.Side("ref", "HEAD~1", export, None, backend_files=(export / "kernels/mine.py",))
    how = ab.Rounds("cpu", 1, tmp_path, None, lambda _: None)
    ab.run_side(side, tmp_path / "s.toml", tmp_path / "o.jsonl", how)
    assert seen[0][-2:] == ["--backend-file", str(export / "kernels/mine.py")]


def test_a_distributed_variant_takes_no_user_backend(tmp_path, capsys):
    (tmp_path / "ring.py").write_text(good().replace('{"mha":', '{"ring":'))
    rc = main(["run", "--variants", "ring", "--backend-file", str(tmp_path / "ring.py"), "--dry-run"])
    assert rc == 2 and "runs over several ranks" in capsys.readouterr().err


def test_the_gate_notes_a_kernel_file_that_changed_or_moved():
    from attnbench.gate.compare import CaseResult, with_kernel_note
    from attnbench.gate.sides import Measured

    def side(where, sha):
        rec = {"backend_source": {"kind": "file", "where": where, "sha256": sha}}
        return Measured("k", rec, "ok", None, ((1.0,),), 1.0, None, 1)

    c = CaseResult("k", "mha/my-softmax", "same", "within")
    assert with_kernel_note(c, side("/a.py", "1" * 64), side("/a.py", "1" * 64)).note is None
    changed = with_kernel_note(c, side("/a.py", "1" * 64), side("/a.py", "2" * 64)).note
    assert changed == "the backend's file changed since the baseline (sha256 111111111111 -> 222222222222)"
    moved = with_kernel_note(c, side("/a.py", "1"), side("/b.py", "1")).note
    assert moved == "the backend comes from /a.py in the baseline, /b.py now"
    plain = Measured("k", {}, "ok", None, ((1.0,),), 1.0, None, 1)
    assert with_kernel_note(c, plain, plain) is c
