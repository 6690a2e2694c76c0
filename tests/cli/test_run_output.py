"""`attnbench run`'s plan, its views while running, and its output options."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch
import typer
from rich.console import Console

from attnbench.cli import main
from attnbench.cli.live import LineView
from attnbench.cli.plan_view import not_run_lines
from attnbench.cli.tables import parse_columns, results_footnotes, results_table, run_baseline
from attnbench.core.errors import UsageError
from attnbench.run import forecast as F
from attnbench.run.plan import make_sweep
from attnbench.run.session import make_config, sweep_cases
from attnbench.run.settings import RunSettings

CPU = torch.device("cpu")
REFS = {"gemm": {"float32": {"flops_per_s": 1e11, "spread": 0.05}}, "copy": {"bytes_per_s": 1e10}}


@pytest.fixture
def fake_refs(monkeypatch):
    """The dry run's in-run references without measuring them (the tests check the plan's shape)."""
    monkeypatch.setattr("attnbench.measure.refs.measure", lambda device, dtypes=("float32",): REFS)


def _plan(time_budget=30.0, **axes):
    cases = sweep_cases([make_sweep(**axes)], CPU)
    return F.forecast(cases, make_config(CPU, RunSettings(time_budget=time_budget)), REFS)


def _text(fn) -> str:
    buf = io.StringIO()
    fn(Console(file=buf, width=200))
    return buf.getvalue()


def test_dry_run_json_lists_every_case_with_prediction_and_decision(capsys, fake_refs, tmp_path):
    out = tmp_path / "r.jsonl"
    rc = main(["run", "--variants", "mha", "--backends", "sdpa,eager,triton", "--seq", "128,256", "--dry-run",
               "--json", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    plan = json.loads(cap.out)
    assert len(plan["cases"]) == 6 and plan["to_run"] == 4
    runs = [c for c in plan["cases"] if c["decision"] == "run"]
    assert all(c["predicted_seconds"] > 0 and c["predicted_peak_bytes"] > 0 for c in runs)
    assert {c["backend"] for c in plan["cases"] if c["decision"] != "run"} == {"triton"}
    startup = plan["predicted_startup_seconds"]
    assert startup > 0 and "references measured here" in plan["startup_note"]
    assert plan["predicted_seconds"] == pytest.approx(startup + sum(c["predicted_seconds"] for c in plan["cases"]),
                                                      abs=0.01)
    assert not out.exists()  # a dry run writes nothing


def test_dry_run_text_summarises_each_reason_once(capsys, fake_refs):
    assert main(["run", "--variants", "flash,gqa", "--seq", "1k..4k", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: ")
    assert "predicted seconds per case" in out
    assert out.count("no CUDA device") == 1  # triton of both variants at three lengths: one line


def test_not_run_lines_group_numbers_blanked():
    plan = _plan(variants="gqa", backends="triton,sdpa-cudnn", seq="1k,2k")
    lines = not_run_lines(plan)
    assert len(lines) == 2 and lines[0].startswith("2 unavailable: gqa/triton")


def test_plan_over_ten_minutes_not_on_a_terminal_says_so_and_goes_on(monkeypatch):
    plan = _plan(variants="mha", backends="sdpa", seq="1k")
    long = F.Plan(tuple(replace_seconds(c, 700.0) for c in plan.cases), 1, 30.0, "cpu")
    buf = io.StringIO()
    view = LineView(Console(file=buf, width=200), io.StringIO())
    view.plan(long)  # no exception: the run goes on
    assert "not a terminal, so no confirmation is asked" in buf.getvalue()
    assert "11 min 40 s" in buf.getvalue()
    # on a terminal the user is asked; no exits 1 before anything is written
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    term = Console(file=io.StringIO(), force_terminal=True, width=200)
    monkeypatch.setattr(typer, "confirm", lambda *a, **k: False)
    with pytest.raises(typer.Exit) as e:
        LineView(term, io.StringIO()).plan(long)
    assert e.value.exit_code == 1
    LineView(term, io.StringIO(), yes=True).plan(long)  # --yes: not asked


def replace_seconds(c, s):
    from dataclasses import replace

    return replace(c, seconds=s)


def test_line_view_prints_one_flushed_line_per_case():
    stream = io.StringIO()
    view = LineView(Console(file=io.StringIO()), stream)
    view.begin(2, 10.0)
    rec = _rec("mha", "sdpa", "ok")
    view.progressed(1, 4.0)
    view.finished(rec)
    line = stream.getvalue()
    assert line.count("\n") == 1 and line.startswith("[1/2 eta 4.0 s] mha/sdpa B1 H8/8 L1k D64 float32 fwd: ok")
    assert "median 1.50 ms" in line or "median 1.5 ms" in line
    assert "mem" in line


def _rec(variant, backend, status, reason=None, L=1024):
    ok = status == "ok"
    return {"variant": variant, "backend": backend, "mode": "fwd", "batch": 1, "heads": 8, "kv_heads": 8,
            "seq_q": L, "seq_k": L, "head_dim": 64, "dtype": "float32", "status": status, "reason": reason,
            "latency_ms": {"median": 1.5, "iqr": 0.1, "n": 10} if ok else None,
            "peak_mem_bytes": 2**20 if ok else None, "kernel": "aten::bmm" if ok else None, "error": None}


def test_repeated_reasons_get_a_marker_and_one_footnote():
    why = "no CUDA device (the Triton kernels run on NVIDIA GPUs; `attnbench check` runs them interpreted)"
    recs = [_rec("mha", "sdpa", "ok")] + [_rec(v, "triton", "unavailable", why, L) for v in ("mha", "gqa")
                                          for L in (1024, 2048, 4096)]
    table = _text(lambda c: c.print(results_table(recs)))
    assert table.count("no CUDA device") == 0 and table.count("[1]") == 6
    notes = results_footnotes(recs)
    assert sum("no CUDA device" in n for n in notes) == 1 and notes[0].startswith("[1] unavailable (6 cases")
    once = [_rec("mha", "triton", "unavailable", why)]
    assert "no CUDA device" in _text(lambda c: c.print(results_table(once)))  # a reason given once stays


def test_columns_choose_and_order_and_bad_names_list_the_accepted():
    assert parse_columns("variant,median,mem") == ["variant", "ms", "mem"]
    t = _text(lambda c: c.print(results_table([_rec("mha", "sdpa", "ok")], columns=["backend", "ms"])))
    assert "backend" in t and "variant" not in t and "status" not in t
    with pytest.raises(UsageError, match="accepted: variant, backend, mode, shape"):
        parse_columns("variant,speed")


def test_baseline_is_one_that_ran():
    assert run_baseline([_rec("mha", "eager", "ok"), _rec("gqa", "eager", "ok")]) == "mha:eager"
    assert run_baseline([_rec("flash", "sdpa-flash", "ok"), _rec("flash", "eager", "ok")]) == "flash:eager"
    assert run_baseline([_rec("mha", "sdpa", "ok"), _rec("mha", "eager", "error")]) is None
    assert run_baseline([_rec("performer", "eager", "ok")]) is None  # an approximation is no baseline


@pytest.mark.parametrize("args, match", [
    (["--format", "xml"], "accepted: table, json, csv"),
    (["--json", "--format", "csv"], "disagree"),
    (["-q", "-v"], "exclude each other"),
    (["--csv", "/nonexistent-dir/r.csv"], "does not exist"),
    (["--columns", "bogus"], "accepted: variant"),
])
def test_bad_output_options_are_one_line(capsys, args, match):
    assert main(["run", "--variants", "mha", "--seq", "64", *args]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_quiet_prints_the_path_and_csv_is_written(capsys, tmp_path):
    out, csv = tmp_path / "r.jsonl", tmp_path / "r.csv"
    rc = main(["run", "--variants", "mha", "--backends", "sdpa,triton", "--seq", "64", "--time-budget", "2",
               "--out", str(out), "--csv", str(csv), "-q"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.strip() == str(out)
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("variant,backend,device,mode") and len(rows) == 3
    assert any(",ok," in r for r in rows) and any(",unavailable," in r for r in rows)


@pytest.mark.slow
def test_piped_run_prints_each_case_while_running(tmp_path):
    """`attnbench run ... | cat`: a case's line arrives while later cases still run."""
    cmd = [sys.executable, "-m", "attnbench", "run", "--variants", "mha", "--backends", "sdpa", "--seq",
           "64,128,256,512", "--time-budget", "3", "--out", str(tmp_path / "r.jsonl")]
    env = {**os.environ, "PYTHONUNBUFFERED": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("[1/4"):
            line = proc.stdout.readline()
        assert line.startswith("[1/4") and "mha/sdpa" in line and ": ok" in line
        assert proc.poll() is None, "the first case's line came only when the run had ended"
        rest = proc.stdout.read()
        assert "[4/4] mha/sdpa" in rest
    finally:
        proc.kill() if proc.poll() is None else None
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert "plan: 4 cases on cpu, 4 to run" in proc.stderr.read()  # the plan came first, on stderr


def test_scaling_table_without_a_baseline_that_ran_names_none():
    """run's scaling table: no "vs baseline" column, and no baseline in the title, when none ran."""
    import importlib.util
    from pathlib import Path

    from attnbench.report.terminal import print_scaling
    from conftest import with_catalogue

    path = Path(__file__).parents[1] / "report" / "test_report.py"
    spec = importlib.util.spec_from_file_location("report_test_records", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    recs = with_catalogue([r for r in mod.synthetic_records() if r["backend"] != "eager"])  # no eager baseline
    assert run_baseline(recs) is None
    console = Console(record=True, width=200)
    assert print_scaling(recs, console, baseline=None)
    text = console.export_text()
    assert "scaling with L" in text and "baseline" not in text
    shown = Console(record=True, width=200)
    print_scaling(recs, shown, baseline="mha:sdpa")
    text = shown.export_text()
    assert "vs baseline" in text and "· baseline mha:sdpa" in text
