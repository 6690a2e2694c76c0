"""A failed case stays failed in every view: the frontier, `show` (tables and --json), the report
(Markdown, HTML, CSV) and run's results table, each with the first line of its reason, whole."""

from __future__ import annotations

import html
import io
import json

from rich.console import Console

from attnbench.cli import main
from attnbench.cli.tables import results_table
from attnbench.report import analysis, terminal
from conftest import results_file, valid_record, with_catalogue

CRASH = ("CppCompileError: C++ compile error … /tmp/torchinductor/cx.cpp:41:9: error: 'at::vec::Vectorized<float>' "
         "has no member named 'blend_with_mask_of_the_length_that_makes_this_line_long' (at worker.py:140)")


def ok(backend: str, L: int, ms: float) -> dict:
    return valid_record(case_id=f"{backend}-{L}", backend=backend, seq_q=L, seq_k=L, status="ok", reason=None,
                        latency_ms={"median": ms, "iqr": 0.01 * ms, "n": 20}, peak_mem_bytes=1000 * L,
                        flags=[])


def records() -> list[dict]:
    recs = [ok("eager", L, 1e-6 * L * L) for L in (256, 512, 1024, 2048)]
    recs += [ok("sdpa", L, 5e-7 * L * L) for L in (256, 512, 2048)]
    recs.append(valid_record(case_id="sdpa-1024", backend="sdpa", seq_q=1024, seq_k=1024, status="error",
                             reason=CRASH + "\nsecond line of the message"))
    return with_catalogue(recs)


def test_frontier_names_a_failure_below_the_longest_length_that_ran():
    [eager, sdpa] = analysis.series(records())
    fr = analysis.frontier(sdpa)
    assert fr["largest_ok"] == 2048 and "failed at 1k (error)" in fr["text"] and "none failed" not in fr["text"]
    assert fr["failed"] == [(1024, "error", CRASH)]
    assert analysis.frontier(eager)["text"] == "ok to 2k, none failed"


def test_show_and_its_json_list_the_failed_case_with_its_first_line(tmp_path, capsys):
    buf = io.StringIO()
    terminal.show(records(), Console(file=buf, width=1000), "mha:eager")
    text = buf.getvalue()
    assert "not run or failed" in text and CRASH in text
    assert "second line" not in text
    path = tmp_path / "r.jsonl"
    results_file(path, *records())
    assert main(["show", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [row] = doc["not_run"]
    assert (row["series"], row["status"], row["reason"], row["lengths"]) == ("mha:sdpa", "error", CRASH, "1k")


def test_the_report_lists_the_failed_case_in_markdown_html_and_csv(tmp_path):
    path = tmp_path / "r.jsonl"
    results_file(path, *records())
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    failed = md.split("## Not run or failed")[1]
    assert CRASH in failed and "| error |" in failed
    assert "failed at 1k (error)" in md and "ok to 2k, none failed" in md  # eager's frontier is clean
    assert CRASH in html.unescape((tmp_path / "rep" / "report.html").read_text())
    assert CRASH in (tmp_path / "rep" / "tables" / "not_run.csv").read_text()


def test_run_results_table_keeps_a_long_reason_whole():
    buf = io.StringIO()
    Console(file=buf, width=1000).print(results_table(records()))
    assert CRASH in buf.getvalue()


def test_a_compile_error_keeps_its_first_line_and_the_compiler_diagnostic():
    from attnbench.measure.failure import failure_fields

    msg = ("backend='inductor' raised:\nCppCompileError: C++ compile error\n\nCommand:\ng++ " + "-O3 " * 200
           + "\n\nOutput:\n/tmp/cx.cpp:41:9: error: 'blend' was not declared in this scope\n   41 | blend(x);")
    try:
        raise RuntimeError(msg)
    except RuntimeError as e:
        fields = failure_fields(e)
    assert fields["status"] == "error" and "\n" not in fields["reason"]
    assert fields["reason"].startswith("RuntimeError: backend='inductor' raised: … /tmp/cx.cpp:41:9: error: 'blend'")
    assert "-O3" not in fields["reason"]


def test_the_model_frontier_names_a_failure_below_the_longest_length():
    from attnbench.report.formodel import frontier_rows

    recs = [{**r, "model": "llama-3-8b", "mode": "fwd"} for r in records() if r["backend"] == "sdpa"]
    [row] = frontier_rows(recs)
    assert row["L"] == "2k" and row["failed"] == f"1k (error: {CRASH})"


def test_the_live_line_of_a_failed_case_keeps_its_reason_whole():
    from attnbench.cli.live import case_line

    [crash] = [r for r in records() if r["status"] == "error"]
    assert case_line(crash).endswith(f": error ({CRASH} second line of the message)")
    skip = {**crash, "status": "skipped", "reason": "x" * 300}
    assert case_line(skip).endswith("(" + "x" * 100 + ")")
