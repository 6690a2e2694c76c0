"""Reading FlashInfer Trace files (core/fitrace.py) and turning them into cases (run/trace_plan.py):
every mistake is one line, through the CLI exit code 2 without a traceback."""

from __future__ import annotations

import json

import pytest
import torch
from fitrace_fixtures import gqa_paged, workload_line, write

from attnbench.cli import main
from attnbench.core.errors import UsageError
from attnbench.core.fitrace import load_definition, load_workloads
from attnbench.run.trace_plan import TraceRequest, plan

RANDOM3 = {"q": {"type": "random"}, "k_cache": {"type": "random"}, "v_cache": {"type": "random"}}


def _paged_workload(name: str, uuid: str, batch: int = 2, pages: int = 9, used: int = 5, **extra) -> str:
    idx = {n: {"type": "safetensors", "path": f"./blob/{uuid}.safetensors", "tensor_key": n}
           for n in ("kv_indptr", "kv_indices", "kv_last_page_len")}
    return workload_line(name, uuid, {"batch_size": batch, "num_pages": pages, "len_indptr": batch + 1,
                                      "num_kv_indices": used},
                         RANDOM3 | idx | {"sm_scale": {"type": "scalar", "value": 0.125}} | extra)


def test_a_definition_and_its_workloads_become_one_case_per_workload_and_backend(tmp_path):
    d = gqa_paged("decode", 8, 2, 64, 64)
    dpath = write(tmp_path / "d.json", d)
    wpath = tmp_path / "w.jsonl"
    wpath.write_text("\n".join(_paged_workload(d["name"], f"u{i}", batch=i + 1) for i in range(3)) + "\n")
    tp = plan(TraceRequest(dpath, wpath), {"backends": "eager,sdpa"}, torch.device("cpu"))
    assert [(c.backend, c.problem.param("workload")) for c in tp.cases] == [
        ("eager", "u0"), ("sdpa", "u0"), ("eager", "u1"), ("sdpa", "u1"), ("eager", "u2"), ("sdpa", "u2")]
    assert {c.variant for c in tp.cases} == {"paged"} and all(c.status is None for c in tp.cases)
    assert [c.problem.batch for c in tp.cases[::2]] == [1, 2, 3]
    rec = tp.annotate({"params": dict(tp.cases[2].problem.params)})
    assert rec["definition"] == d["name"] and rec["definition_file"] == str(dpath.resolve())
    assert rec["workload"] == "u1" and rec["workload_axes"]["batch_size"] == 2
    assert rec["workload_inputs"]["sm_scale"] == {"type": "scalar", "value": 0.125}
    assert "3 of 3 workloads: blobs not found" in tp.missing_blobs and "kv_indices" in tp.missing_blobs
    picked = plan(TraceRequest(dpath, wpath, workload_ids=("u2",)), {"backends": "eager"}, torch.device("cpu"))
    assert [c.problem.param("workload") for c in picked.cases] == ["u2"]


def test_without_workloads_the_axes_come_from_the_options(tmp_path):
    dpath = write(tmp_path / "d.json", gqa_paged("decode", 8, 2, 64, 64))
    tp = plan(TraceRequest(dpath), {"backends": "eager", "batch": ["2"], "seq": "100,300"}, torch.device("cpu"))
    assert len(tp.cases) == 2 and tp.cases[0].problem.param("workload") is None
    assert tp.cases[1].problem.param("lengths") == "1,1;300,300"
    assert json.loads(tp.cases[1].problem.param("axes"))["num_kv_indices"] == 2 * 5  # 300 tokens: 5 pages of 64
    assert tp.missing_blobs is None


@pytest.mark.parametrize("given, trust, says", [
    ({"backends": "nope"}, False, "unknown backend 'nope'"),
    ({"backends": "reference"}, False, "give --trust-reference"),
    ({"heads": ["4"]}, False, "--heads does not combine"),
    ({"dtype": "float32"}, False, "fixes its inputs' dtype (bfloat16)"),
])
def test_options_that_do_not_fit_a_definition_are_one_line(tmp_path, given, trust, says):
    dpath = write(tmp_path / "d.json", gqa_paged("decode", 8, 2, 64, 1))
    with pytest.raises(UsageError, match=says.replace("(", r"\(").replace(")", r"\)")):
        plan(TraceRequest(dpath, trust_reference=trust), given, torch.device("cpu"))


def test_bad_workloads_files_name_the_line(tmp_path):
    d = gqa_paged("decode", 8, 2, 64, 64)
    defn = load_definition(write(tmp_path / "d.json", d))
    cases = {
        "other": _paged_workload("another_definition", "u0"),
        "axis": workload_line(d["name"], "u0", {"batch_size": 1}, {}),
        "json": "{not json",
        "type": _paged_workload(d["name"], "u0", q={"type": "gaussian"}),
    }
    says = {"other": "is a workload of 'another_definition'", "axis": "no value for var axis 'num_pages'",
            "json": "not JSON", "type": "line 1: field 'workload.inputs.q"}
    for key, line in cases.items():
        (tmp_path / "w.jsonl").write_text(line + "\n")
        with pytest.raises(UsageError, match="line 1") as e:
            load_workloads(tmp_path / "w.jsonl", defn)
        assert says[key].split(": ")[-1].split("'")[0] in str(e.value), (key, str(e.value))
    (tmp_path / "w.jsonl").write_text(_paged_workload(d["name"], "u0") + "\n")
    with pytest.raises(UsageError, match="--workload zzz: not in"):
        load_workloads(tmp_path / "w.jsonl", defn, ["zzz"])


def test_an_unmappable_op_and_a_malformed_definition_exit_2_with_one_line(tmp_path, capsys):
    gemm = {"name": "gemm_n8_k8", "op_type": "gemm", "axes": {"M": {"type": "var"}, "N": {"type": "const", "value": 8}},
            "inputs": {"A": {"shape": ["M", "N"], "dtype": "bfloat16"}},
            "outputs": {"C": {"shape": ["M", "N"], "dtype": "bfloat16"}}, "reference": "def run(A):\n    return A\n"}
    assert main(["run", "--definition", str(write(tmp_path / "g.json", gemm)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    accepted = "gqa_paged, gqa_ragged, mla_paged, mla_ragged, dsa_paged"
    assert f"op_type 'gemm' is not one attnbench can run; accepted: {accepted}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    indexer = dict(gemm, name="topk_indexer", op_type="dsa_paged", outputs={"topk_indices": gemm["outputs"]["C"]})
    assert main(["run", "--definition", str(write(tmp_path / "i.json", indexer)), "--dry-run"]) == 2
    assert "runs the sparse attention" in capsys.readouterr().err
    broken = gqa_paged("decode", 8, 2, 64, 1)
    del broken["outputs"]
    assert main(["run", "--definition", str(write(tmp_path / "b.json", broken)), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "field 'outputs' is missing" in err and "Traceback" not in err
    bad_axis = gqa_paged("decode", 8, 2, 64, 1)
    bad_axis["inputs"]["q"]["shape"][0] = "tokens"
    with pytest.raises(UsageError, match="names axis 'tokens'"):
        load_definition(write(tmp_path / "c.json", bad_axis))
    assert main(["run", "--workloads", str(tmp_path / "w.jsonl"), "--dry-run"]) == 2
    assert "go with --definition FILE" in capsys.readouterr().err
