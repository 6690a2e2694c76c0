"""Results files: Writer + read round trip, truncated and corrupt files, schema version,
the pandas frame."""

import json
import math
import warnings

import pytest
import torch

from attnbench.core import results
from attnbench.core.results import RECORD_FIELDS, SCHEMA_VERSION, ResultsError, Writer, read, to_frame
from attnbench.run.plan import expand, make_sweep
from attnbench.run.worker import base_record

CPU = torch.device("cpu")


def header() -> dict:
    return results.make_header(["attnbench", "run"], {"device": "cpu", "torch": torch.__version__},
                               {"gemm": {"float32": {"n": 8, "median_ms": 1.0, "flops_per_s": 1e9}},
                                "copy": {"bytes": 8, "median_ms": 1.0, "bytes_per_s": 1e9}})


def record(seq: int = 64, status: str = "ok") -> dict:
    (case,) = expand([make_sweep(variants="mha", backends="sdpa", seq=seq)], CPU)
    rec = base_record(case, CPU)
    rec.update(status=status, latency_ms={"median": 1.5, "mean": 1.6, "min": 1.0, "p10": 1.1, "p90": 2.0,
                                          "iqr": 0.2, "n": 10},
               samples_ms=[1.5] * 10, flops=4.0 * 8 * seq * seq * 64, error={"vs": "reference", "rel_l2": 1e-7,
                                                                              "max_abs": 2e-6})
    return rec


def write(path, recs, **kw):
    with Writer(path, header(), **kw) as w:
        for r in recs:
            w.write(r)


def test_base_record_has_every_field():
    assert set(RECORD_FIELDS) <= set(record())


def test_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = [record(64), record(128, "oom")]
    write(path, recs)
    h, got = read(path)
    assert h["type"] == "header" and h["schema_version"] == SCHEMA_VERSION and h["tool"] == "attnbench"
    assert h["command"] == ["attnbench", "run"] and h["refs"]["copy"]["bytes_per_s"] == 1e9
    assert [r["type"] for r in got] == ["record", "record"]
    for want, r in zip(recs, got):
        assert {k: r[k] for k in want} == json.loads(json.dumps(want))
    assert got[0]["case_id"] != got[1]["case_id"]
    assert path.read_text().count("\n") == 3  # one line each, newline-terminated


def test_case_id_is_stable_and_order_independent():
    p = {"a": 1, "b": 2}
    assert results.case_id(p, "mha", "sdpa", "cpu") == results.case_id({"b": 2, "a": 1}, "mha", "sdpa", "cpu")
    assert results.case_id(p, "mha", "sdpa", "cpu") != results.case_id(p, "mha", "sdpa", "cuda")
    assert len(results.case_id(p, "mha", "sdpa", "cpu")) == 16


def test_truncated_last_line_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [record(64), record(128)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # a killed writer: half of the last line, no newline
    with pytest.warns(UserWarning, match="truncated last line"):
        _, got = read(path)
    assert len(got) == 1


def test_append_after_truncation_starts_a_fresh_line(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [record(64), record(128)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    write(path, [record(256)], append=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, got = read(path)
    assert [r["seq_q"] for r in got] == [64, 256]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, [record(64), record(128)])
    lines = path.read_text().split("\n")
    lines[1] = lines[1][:30]
    path.write_text("\n".join(lines))
    with pytest.raises(ResultsError, match=":2: not valid JSON"):
        read(path)


@pytest.mark.parametrize("text,match", [
    ("a,b,c\n1,2,3\n", "not JSON"),
    ("", "is empty"),
    ('{"hello": 1}\n', "not an attnbench header"),
    ("[1, 2]\n", "expected a JSON object"),
])
def test_not_a_results_file(tmp_path, text, match):
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    with pytest.raises(ResultsError, match=match):
        read(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        read(tmp_path / "nope.jsonl")
    with pytest.raises(ResultsError, match="is a directory"):
        read(tmp_path)


def test_wrong_schema_version_is_named(tmp_path):
    path = tmp_path / "r.jsonl"
    h = header() | {"schema_version": 99}
    path.write_text(json.dumps(h) + "\n")
    with pytest.raises(ResultsError, match="schema_version 99 is not supported.*version 1"):
        read(path)


@pytest.mark.parametrize("change,match", [
    (lambda r: r.pop("flops"), "lacks flops"),
    (lambda r: r.update(status="fine"), "unknown status 'fine'"),
    (lambda r: r.update(type="header"), "expected a record"),
])
def test_invalid_records(tmp_path, change, match):
    path = tmp_path / "r.jsonl"
    rec = {"type": "record", **record()}
    change(rec)
    path.write_text(json.dumps(header()) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(ResultsError, match=match):
        read(path)


def test_to_frame_columns():
    recs = [record(64), record(128, "timeout")]
    recs[1].update(latency_ms=None, error=None)
    df = to_frame(recs)
    assert len(df) == 2
    for col in ("variant", "backend", "seq_q", "status", "flops", "latency_median", "latency_iqr", "latency_n",
                "latency_p10", "error_rel_l2", "error_max_abs", "error_vs", "params", "case_id"):
        assert col in df.columns, col
    for col in ("latency_ms", "samples_ms", "telemetry", "error", "type"):
        assert col not in df.columns
    assert df.loc[0, "latency_median"] == 1.5 and math.isnan(df.loc[1, "latency_median"])
    assert df.loc[0, "params"] == "{}"


def test_iter_records(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write(a, [record(64)])
    write(b, [record(64), record(128)])
    assert len(list(results.iter_records([a, b]))) == 3


def test_atomic_write_text(tmp_path):
    path = tmp_path / "t.txt"
    results.atomic_write_text(path, "one")
    results.atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_non_finite_floats_are_written_as_valid_json(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = record()
    rec.update(error={"vs": "reference", "rel_l2": float("nan"), "max_abs": float("inf")})
    write(path, [rec])
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = [json.loads(line) for line in path.read_text().splitlines()][-1]
    assert back["error"]["rel_l2"] is None and back["error"]["max_abs"] is None


def test_cost_parts_round_trip_and_are_typed(tmp_path):
    """`cost_parts` (variants whose cost has parts: dsa) reads back as written; a negative or
    non-numeric part is refused with the field named."""
    parts = {"indexer": {"flops": 1e9, "bytes": 4e6}, "attention": {"flops": 3e8, "bytes": 2e6}}
    path = tmp_path / "r.jsonl"
    write(path, [record() | {"cost_parts": parts}])
    (got,) = read(path)[1]
    assert got["cost_parts"] == parts
    bad = {"type": "record", **record(), "cost_parts": {"indexer": {"flops": -1.0}}}
    path.write_text(json.dumps(header()) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ResultsError, match="cost_parts"):
        read(path)
