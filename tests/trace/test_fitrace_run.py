"""`attnbench run --definition` end to end, through the worker: a small definition and a workloads
file of our own (one workload with its blob, one without), every backend with --trust-reference,
the records' fields as docs/results-schema.md states them; without --trust-reference the oracle
is attnbench's float64 attention and the record says why."""

from __future__ import annotations

import json

import pytest
from fitrace_fixtures import gqa_paged, workload_line, write
from safetensors.torch import save_file

from attnbench.cli import main
from attnbench.core.schema import RecordModel

RANDOM = {"q": {"type": "random"}, "k_cache": {"type": "random"}, "v_cache": {"type": "random"}}


def _files(tmp_path):
    import torch

    d = gqa_paged("decode", 4, 1, 64, 64)
    dpath = write(tmp_path / "def.json", d)
    (tmp_path / "data/blob").mkdir(parents=True)
    save_file({"kv_indptr": torch.tensor([0, 2, 3], dtype=torch.int32),
               "kv_indices": torch.tensor([3, 0, 5], dtype=torch.int32),
               "kv_last_page_len": torch.tensor([7, 64], dtype=torch.int32)}, str(tmp_path / "data/blob/a.safetensors"))
    lines = []
    for uuid, blob in (("with-blob", "./blob/a.safetensors"), ("no-blob", "./blob/gone.safetensors")):
        idx = {n: {"type": "safetensors", "path": blob, "tensor_key": n}
               for n in ("kv_indptr", "kv_indices", "kv_last_page_len")}
        lines.append(workload_line(d["name"], uuid, {"batch_size": 2, "num_pages": 6, "len_indptr": 3,
                                                     "num_kv_indices": 3},
                                   RANDOM | idx | {"sm_scale": {"type": "scalar", "value": 0.125}}))
    (tmp_path / "w.jsonl").write_text("\n".join(lines) + "\n")
    return d, dpath, tmp_path / "w.jsonl"


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines() if json.loads(x).get("type") == "record"]


@pytest.mark.slow
def test_a_definition_runs_every_backend_against_its_reference(tmp_path, capsys):
    d, dpath, wpath = _files(tmp_path)
    out = tmp_path / "r.jsonl"
    rc = main(["run", "--definition", str(dpath), "--workloads", str(wpath), "--blobs", str(tmp_path / "data"),
               "--trust-reference", "--backends", "eager,sdpa,triton,reference", "--device", "cpu",
               "--time-budget", "0.2", "--threads", "1", "--out", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    assert "1 of 2 workloads: blobs not found" in capsys.readouterr().err
    recs = _records(out)
    assert [(r["workload"], r["backend"]) for r in recs] == [
        (u, b) for u in ("with-blob", "no-blob") for b in ("eager", "sdpa", "triton", "reference")]
    for r in recs:
        RecordModel.model_validate(r)
        assert r["status"] == "ok", r["reason"]
        assert r["definition"] == d["name"] and r["definition_file"] == str(dpath.resolve())
        assert r["workload_axes"] == {"batch_size": 2, "num_pages": 6, "len_indptr": 3, "num_kv_indices": 3}
        assert r["workload_inputs"]["sm_scale"] == {"type": "scalar", "value": 0.125}
        check = r["reference_check"]
        assert check["passed"], check
        assert check["reference"] == ("attnbench-fp64" if r["backend"] == "reference" else "definition")
        longest = r["seq_lengths"]["max"]  # the bf16 budget at the workload's longest sequence
        assert check["tolerance"]["atol"] == pytest.approx(4 * (2**-8 + 2**-24 * longest**0.5))
        assert (check["lse_max_abs"] is None) == (r["backend"] in ("sdpa", "triton"))
    with_blob = recs[0]
    assert with_blob["workload_notes"] is None and with_blob["seq_lengths"]["total"] == 64 + 7 + 64
    assert any("kv_indices: blob ./blob/gone.safetensors not found" in n for n in recs[4]["workload_notes"])

    fp64 = tmp_path / "fp64.jsonl"
    assert main(["run", "--definition", str(dpath), "--workloads", str(wpath), "--workload", "no-blob",
                 "--backends", "eager", "--device", "cpu", "--time-budget", "0.2", "--threads", "1",
                 "--out", str(fp64), "-q"]) == 0
    (r,) = _records(fp64)
    assert r["workload"] == "no-blob" and r["reference_check"]["reference"] == "attnbench-fp64"
    assert "the definition's reference was not run" in r["reference_check"]["note"]


def test_the_dry_run_lists_each_case_with_its_workload(tmp_path, capsys):
    d, dpath, wpath = _files(tmp_path)
    assert main(["run", "--definition", str(dpath), "--workloads", str(wpath), "--backends", "eager,sdpa",
                 "--device", "cpu", "--dry-run", "--json"]) == 0
    cases = json.loads(capsys.readouterr().out)["cases"]
    assert [(c["workload"], c["backend"], c["definition"]) for c in cases] == [
        (u, b, d["name"]) for u in ("with-blob", "no-blob") for b in ("eager", "sdpa")]


@pytest.mark.slow
def test_the_definitions_code_runs_only_with_trust_reference_and_only_in_the_worker(tmp_path, capsys):
    """A reference that leaves a mark when executed: planning, a dry run with --trust-reference and a
    run without it never execute it; a run with it does (in the worker)."""
    d, _, wpath = _files(tmp_path)
    mark = tmp_path / "executed"
    d["reference"] = f"from pathlib import Path\nPath({str(mark)!r}).write_text('x')\n" + d["reference"]
    dpath = write(tmp_path / "marked.json", d)
    common = ["--definition", str(dpath), "--workloads", str(wpath), "--workload", "no-blob", "--backends", "eager",
              "--device", "cpu", "--time-budget", "0.2", "--threads", "1", "-q"]
    assert main(["run", *common, "--trust-reference", "--dry-run"]) == 0
    assert main(["run", *common, "--out", str(tmp_path / "a.jsonl")]) == 0
    assert not mark.exists()
    assert main(["run", *common, "--trust-reference", "--out", str(tmp_path / "b.jsonl")]) == 0
    assert mark.exists()


def test_a_users_backend_file_with_a_definition_is_refused_with_what_to_do(tmp_path, capsys):
    """A user's backend takes (q, k, v) of a variant, a definition's backends its own named inputs:
    the pair is refused in one line that names the variant to time the kernel on instead."""
    dpath = write(tmp_path / "d.json", gqa_paged("decode", 4, 2, 64, 16))
    kernel = tmp_path / "k.py"
    kernel.write_text("BACKENDS = {}\n")
    assert main(["run", "--definition", str(dpath), "--backend-file", str(kernel), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--backend-file" in err and "gqa_* → paged" in err and "Traceback" not in err
