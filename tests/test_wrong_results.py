"""Correctness before speed, end to end: the test-only fault backend made wrong on purpose
(`fault=wrong`: SDPA's output × 1.1, timed like SDPA) runs through real worker processes beside a
correct SDPA and the eager baseline. Its records are shown as wrong with their timing and left out
of the run's own verdicts, the report's speedups, fits and story, `show`, `recommend` and the gate
(verdict wrong, exit 2), each with the reason; the correct records stay in."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.core.correctness import judge

pytestmark = pytest.mark.slow  # one real run of 6 small cases (~10-40 s on a loaded 2-core CPU)

RUN = ["run", "--variants", "mha", "--backends", "fault,sdpa,eager", "--param", "fault=wrong", "--seq", "128,256",
       "--heads", "2", "--head-dim", "32", "--time-budget", "0.05", "--threads", "1"]


@pytest.fixture(scope="module")
def wrong_run(tmp_path_factory) -> tuple[Path, str]:
    """(results file, the run's own stdout) of one real run."""
    out = tmp_path_factory.mktemp("wrong") / "r.jsonl"
    env = dict(os.environ, ATTNBENCH_TEST_BACKENDS="1")
    done = subprocess.run([sys.executable, "-m", "attnbench", *RUN, "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, done.stdout


def _records(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("type") == "record"]


def test_the_fault_is_judged_wrong_and_the_others_correct(wrong_run):
    path, stdout = wrong_run
    by = {(r["backend"], r["seq_k"]): judge(r) for r in _records(path)}
    assert {k: j.state for k, j in by.items()} == {(b, L): "wrong" if b == "fault" else "correct"
                                                   for b in ("fault", "sdpa", "eager") for L in (128, 256)}
    assert by["fault", 128].reason.startswith("error 1.0e-01 > ") and "allowed for float32 at Lk 128" in by[
        "fault", 128].reason
    # the run's own output: each case line, the table's status, the lines of what its verdicts left out
    assert "mha/fault B1 H2/2 L128 D32 float32 fwd: ok, median" in stdout and "WRONG OUTPUT: error 1.0e-01" in stdout
    left = [ln for ln in stdout.splitlines() if ln.startswith("wrong, left out of the scaling verdicts and speedups")]
    assert len(left) == 2 and "mha:fault float32 L256 fwd fault=wrong — error 1.0e-01 >" in left[1]


def test_the_report_leaves_it_out_of_speedups_and_verdicts_with_the_reason(wrong_run, tmp_path):
    path, _ = wrong_run
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    story = md.split("**Contents**")[0]
    assert "2 cases computed a wrong output and are left out of every speedup, verdict and chart below: " \
           "mha:fault float32 at 128 (error 1.0e-01 > " in story
    assert "mha:sdpa is " in story and "faster than mha:eager at 256" in story  # the correct one stays in
    tables = tmp_path / "rep" / "tables"

    def series(name: str) -> set[str]:
        return {row["series"] for row in csv.DictReader((tables / f"{name}.csv").open())}

    assert series("scaling") == series("measurements") == {"mha:sdpa", "mha:eager"}
    wrong = list(csv.DictReader((tables / "wrong.csv").open()))
    assert [(w["series"], w["L"]) for w in wrong] == [("mha:fault", "128"), ("mha:fault", "256")]
    assert all(w["latency"].endswith(" ms") and "allowed for float32" in w["reason"] for w in wrong)  # timing kept
    assert "## Wrong results" in md


def test_show_and_recommend_leave_it_out_with_the_reason(wrong_run, capsys):
    path, _ = wrong_run
    assert main(["show", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["series"] for r in doc["measurements"]} == {"mha:sdpa", "mha:eager"}
    assert all(not r["series"].startswith("mha:fault") for r in doc["scaling"])
    assert [(w["series"], w["L"]) for w in doc["wrong"]] == [("mha:fault", "128"), ("mha:fault", "256")]
    assert main(["recommend", str(path), "--format", "json"]) == 0
    picks = json.loads(capsys.readouterr().out)
    assert [p["seq"] for p in picks] == [128, 256]
    for p in picks:
        assert p["backend"] in ("sdpa", "eager") and p["runner_up"] != "fault"
        assert "fault left out as wrong (error 1.0e-01 > " in p["note"]


def test_the_gate_fails_a_kernel_that_became_wrong(wrong_run, tmp_path, capsys):
    """Baseline: the same cases when the kernel was right (its errors rewritten to SDPA's); current:
    wrong. The fault cases get the verdict wrong and the comparison exits 2; the other way round
    (baseline wrong, current right) there is nothing to compare speed with: new, exit 0."""
    path, _ = wrong_run
    lines = path.read_text().splitlines()
    fixed = []
    for line in lines:
        r = json.loads(line)
        if r.get("backend") == "fault":
            r["error"] = {**r["error"], "rel_l2": 3e-7, "max_abs": 1e-6}
        fixed.append(json.dumps(r))
    right = tmp_path / "right.jsonl"
    right.write_text("\n".join(fixed) + "\n")
    assert main(["compare", str(right), str(path), "--format", "json"]) == 2
    cases = {c["label"]: c for c in json.loads(capsys.readouterr().out)["cases"]}
    wrong = [c for c in cases.values() if c["verdict"] == "wrong"]
    assert len(wrong) == 2 and all("fault" in c["label"] for c in wrong)
    assert all(c["why"].startswith("wrong output, not compared for speed: error 1.0e-01 > ") for c in wrong)
    assert main(["compare", str(path), str(right), "--format", "json"]) == 0
    back = [c for c in json.loads(capsys.readouterr().out)["cases"] if "fault" in c["label"]]
    assert {c["verdict"] for c in back} == {"new"} and all("baseline's output was wrong" in c["why"] for c in back)
