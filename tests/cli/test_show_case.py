"""`show --case` and `run -v`: where a user finds the command that reruns a record's case."""

from __future__ import annotations

import json

from attnbench.cli import main
from attnbench.cli.live import detail_line
from tests.conftest import results_file, valid_record

REPRO = "attnbench run --variants mha --backends sdpa --seq 64 --param 'pattern=a b'"


def _file(tmp_path):
    path = tmp_path / "r.jsonl"
    results_file(path, valid_record(case_id="aaaa111122223333", repro=REPRO),
                 valid_record(case_id="bbbb111122223333", backend="eager"))
    return path


def test_a_case_id_prefix_prints_its_repro(tmp_path, capsys):
    assert main(["show", str(_file(tmp_path)), "--case", "aaaa"]) == 0
    out = capsys.readouterr().out
    assert "case aaaa111122223333: mha:sdpa fwd float32 on cpu" in out and f"rerun: {REPRO}" in out
    assert "bbbb" not in out


def test_a_variant_backend_pair_and_a_record_without_repro(tmp_path, capsys):
    assert main(["show", str(_file(tmp_path)), "--case", "mha:eager"]) == 0
    assert "rerun: not recorded" in capsys.readouterr().out


def test_json_prints_the_records_and_an_unknown_case_is_one_line(tmp_path, capsys):
    path = _file(tmp_path)
    assert main(["show", str(path), "--case", "aaaa", "--json"]) == 0
    assert [r["repro"] for r in json.loads(capsys.readouterr().out)] == [REPRO]
    assert main(["show", str(path), "--case", "zzzz"]) == 2
    err = capsys.readouterr().err
    assert "no record has that case_id" in err and "mha:eager, mha:sdpa" in err


def test_run_verbose_lines_end_with_the_rerun_command():
    ok = valid_record(status="ok", repro=REPRO, latency_ms={"n": 3}, timing={"stopped_by": "time"})
    assert detail_line(ok).endswith(f"\n    rerun: {REPRO}")
    assert detail_line(valid_record(status="error", repro=REPRO)) == f"    rerun: {REPRO}"
    assert detail_line(valid_record(status="error")) is None
