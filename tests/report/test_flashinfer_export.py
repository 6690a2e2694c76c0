"""`attnbench export --format flashinfer-trace`: records carrying a definition and its workload
(the fields `run --definition` writes) become a TraceSet folder whose every object our schema
models accept, naming every workload uuid; what cannot be a trace is counted with its reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.report import flashinfer_trace as ft
from tests.conftest import ENV, results_file, valid_record

DEF_NAME = "gqa_paged_decode_h4_kv2_d16_ps1"
UUIDS = ("6f1c0a52-0000-4000-8000-000000000001", "6f1c0a52-0000-4000-8000-000000000002")

# A small definition in the published format, written here (its reference is our own few lines).
DEFINITION = {
    "name": DEF_NAME, "op_type": "gqa_paged", "description": "test definition", "tags": ["stage:decode"],
    "axes": {"batch_size": {"type": "var"}, "num_qo_heads": {"type": "const", "value": 4},
             "num_kv_heads": {"type": "const", "value": 2}, "head_dim": {"type": "const", "value": 16},
             "num_pages": {"type": "var"}, "page_size": {"type": "const", "value": 1},
             "len_indptr": {"type": "var"}, "num_kv_indices": {"type": "var"}},
    "inputs": {"q": {"shape": ["batch_size", "num_qo_heads", "head_dim"], "dtype": "bfloat16"},
               "k_cache": {"shape": ["num_pages", "page_size", "num_kv_heads", "head_dim"], "dtype": "bfloat16"},
               "v_cache": {"shape": ["num_pages", "page_size", "num_kv_heads", "head_dim"], "dtype": "bfloat16"},
               "kv_indptr": {"shape": ["len_indptr"], "dtype": "int32"},
               "kv_indices": {"shape": ["num_kv_indices"], "dtype": "int32"},
               "sm_scale": {"shape": None, "dtype": "float32"}},
    "outputs": {"output": {"shape": ["batch_size", "num_qo_heads", "head_dim"], "dtype": "bfloat16"},
                "lse": {"shape": ["batch_size", "num_qo_heads"], "dtype": "float32"}},
    "reference": "import torch\n\n\ndef run(q, k_cache, v_cache, kv_indptr, kv_indices, sm_scale):\n"
                 "    raise NotImplementedError\n",
}


def _case(backend: str, uuid: str, def_file: Path, **changes) -> dict:
    """A record of one backend on one workload, as `run --definition --workloads` writes it."""
    batch = 1 if uuid == UUIDS[0] else 2
    rec = valid_record(
        variant="paged", backend=backend, mode="decode", dtype="bfloat16", batch=batch, heads=4, kv_heads=2,
        seq_q=1, seq_k=8, head_dim=16, status="ok", reason=None, case_id=f"{backend[:8]}{uuid[-8:]}",
        latency_ms={"median": 0.9, "mean": 1.0, "min": 0.8, "p10": 0.85, "p90": 1.2, "iqr": 0.1, "n": 20},
        definition=DEF_NAME, definition_file=str(def_file), workload=uuid,
        workload_axes={"batch_size": batch, "num_pages": 8, "len_indptr": batch + 1, "num_kv_indices": 8},
        workload_inputs={"q": {"type": "random"}, "k_cache": {"type": "random"}, "v_cache": {"type": "random"},
                         "kv_indptr": {"type": "safetensors", "path": "./blob/x.safetensors",
                                       "tensor_key": "kv_indptr"},
                         "kv_indices": {"type": "safetensors", "path": "./blob/x.safetensors",
                                        "tensor_key": "kv_indices"},
                         "sm_scale": {"type": "scalar", "value": 0.25}},
        reference_check={"passed": True, "max_abs": 0.004, "max_rel": 0.01, "lse_max_abs": 0.002,
                         "tolerance": {"atol": 0.02, "rtol": 0.02}, "reference": "definition"},
        repro=f"attnbench run --definition {def_file} --backends {backend}",
    )
    return rec | changes


@pytest.fixture
def def_file(tmp_path) -> Path:
    path = tmp_path / f"{DEF_NAME}.json"
    path.write_text(json.dumps(DEFINITION, indent=1))
    return path


def _records(def_file: Path) -> list[dict]:
    recs = []
    for u in UUIDS:
        recs += [_case("reference", u, def_file, latency_ms={"median": 3.5, "mean": 4.0, "n": 10, "iqr": 0.1}),
                 _case("sdpa", u, def_file),
                 _case("eager", u, def_file, reference_check={"passed": False, "max_abs": 0.5, "max_rel": 2.0,
                                                             "lse_max_abs": None, "tolerance": {"atol": 0.02,
                                                                                                "rtol": 0.02},
                                                             "reference": "definition"}),
                 _case("flex", u, def_file, status="error", reason="RuntimeError: boom", latency_ms=None)]
    recs.append(_case("triton", UUIDS[0], def_file, status="unavailable", reason="no CUDA device", latency_ms=None))
    recs.append(_case("flex", UUIDS[1], def_file, reference_check=None, case_id="nocheck0"))
    recs.append(_case("flex", UUIDS[1], def_file, case_id="nan00000",
                      reference_check={"passed": False, "max_abs": None, "max_rel": None, "lse_max_abs": None,
                                       "tolerance": {}, "reference": "definition"}))
    recs.append(valid_record(status="ok", latency_ms={"mean": 1.0, "n": 3}))  # a plain run: no definition
    return recs


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_the_folder_validates_and_names_every_workload(tmp_path, def_file, capsys):
    res, out = tmp_path / "r.jsonl", tmp_path / "set"
    results_file(res, *_records(def_file), header={"type": "header", "schema_version": 1, "tool": "attnbench",
                                                   "created": "2026-12-05T21:20:34+0000", "command": ["t"],
                                                   "env": ENV | {"device_name": "NVIDIA H100 80GB HBM3"},
                                                   "refs": None, "catalogue": {"paged": {"family": "paged"}}})
    assert main(["export", str(res), "--format", "flashinfer-trace", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "exported 6 traces of 2 workloads, 3 solutions, 1 definitions, 2 reference timings" in err
    assert "left out 1 record: status unsupported" in err and "left out 1 record: not run from a FlashInfer" in err
    assert "left out 1 record: no reference_check" in err and "left out 1 record: failed its reference check" in err

    d = ft.Definition.model_validate_json((out / "definitions/gqa_paged" / f"{DEF_NAME}.json").read_text())
    assert d.name == DEF_NAME
    workloads = [ft.Trace.model_validate(x) for x in _lines(out / "workloads/gqa_paged" / f"{DEF_NAME}.jsonl")]
    assert sorted(w.workload.uuid for w in workloads) == sorted(UUIDS)
    assert all(w.solution is None and w.evaluation is None for w in workloads)

    traces = [ft.Trace.model_validate(x) for x in _lines(out / "traces/attnbench/gqa_paged" / f"{DEF_NAME}.jsonl")]
    assert {t.workload.uuid for t in traces} == set(UUIDS)
    by = {(t.solution, t.workload.uuid): t.evaluation for t in traces}
    ok = by[("attnbench_paged_sdpa", UUIDS[0])]
    assert ok.status == "PASSED" and ok.correctness.max_relative_error == 0.01
    assert ok.performance.latency_ms == 1.0 and ok.performance.reference_latency_ms == 4.0
    assert ok.performance.speedup_factor == pytest.approx(4.0)
    assert ok.environment.hardware == "NVIDIA_H100_80GB_HBM3" and ok.environment.libs["torch"] == "2"
    assert ok.timestamp == "2026-12-05T21:20:34+00:00" and "attnbench run --definition" in ok.log
    wrong = by[("attnbench_paged_eager", UUIDS[1])]
    assert wrong.status == "INCORRECT_NUMERICAL" and wrong.performance is None
    assert wrong.correctness.max_absolute_error == 0.5
    failed = by[("attnbench_paged_flex", UUIDS[0])]
    assert failed.status == "RUNTIME_ERROR" and failed.correctness is None and "boom" in failed.log

    sols = sorted((out / "solutions/attnbench/gqa_paged" / DEF_NAME).glob("*.json"))
    assert [p.stem for p in sols] == ["attnbench_paged_eager", "attnbench_paged_flex", "attnbench_paged_sdpa"]
    sol = ft.Solution.model_validate_json(sols[2].read_text())
    assert sol.author == "attnbench" and sol.spec.entry_point == "attnbench_backend.py::build"
    assert "registry.get('paged').backend('sdpa')" in sol.sources[0].content
    assert "attnbench/variants/paged.py" in sol.description and "cannot call" in sol.description


def test_without_a_timed_reference_a_passed_record_is_left_out_not_given_a_speedup(tmp_path, def_file, capsys):
    res, out = tmp_path / "r.jsonl", tmp_path / "set"
    results_file(res, *[r for r in _records(def_file) if r["backend"] != "reference"])
    assert main(["export", str(res), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "left out 2 records: passed, but its case has no timed reference" in err
    traces = _lines(out / "traces/attnbench/gqa_paged" / f"{DEF_NAME}.jsonl")
    assert {t["evaluation"]["status"] for t in traces} == {"INCORRECT_NUMERICAL", "RUNTIME_ERROR"}


def test_a_missing_definition_file_is_said_and_the_traces_kept(tmp_path, def_file, capsys):
    res, out = tmp_path / "r.jsonl", tmp_path / "set"
    results_file(res, *_records(def_file))
    def_file.unlink()
    assert main(["export", str(res), "--out", str(out)]) == 0
    assert "left out (its traces are kept under op_type gqa_paged)" in capsys.readouterr().err
    assert not (out / "definitions").exists() and (out / "traces/attnbench/gqa_paged").is_dir()


def test_nothing_exportable_and_bad_options_are_one_line_exit_2(tmp_path, capsys):
    res = tmp_path / "plain.jsonl"
    results_file(res, valid_record(status="ok", latency_ms={"mean": 1.0, "n": 3}))
    assert main(["export", str(res), "--out", str(tmp_path / "set")]) == 2
    err = capsys.readouterr().err
    assert "nothing to export" in err and "--definition DEF.json" in err and not (tmp_path / "set").exists()
    assert main(["export", str(res), "--format", "json", "--out", str(tmp_path / "set")]) == 2
    assert "accepted: flashinfer-trace" in capsys.readouterr().err
    assert main(["export", str(res)]) == 2
    assert "export needs --out DIR" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "set")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(res), "--out", str(tmp_path / "no" / "set")]) == 2
    assert "directory" in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_an_earlier_export_needs_force_and_another_folder_is_refused(tmp_path, def_file, capsys):
    res, out = tmp_path / "r.jsonl", tmp_path / "set"
    results_file(res, *_records(def_file))
    assert main(["export", str(res), "--out", str(out)]) == 0
    assert main(["export", str(res), "--out", str(out)]) == 2
    assert "add --force" in capsys.readouterr().err
    assert main(["export", str(res), "--out", str(out), "--force"]) == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["export", str(res), "--out", str(other), "--force"]) == 2
    assert (other / "keep.txt").read_text() == "x"


def test_a_failed_write_leaves_no_partial_folder(tmp_path, def_file, capsys, monkeypatch):
    res, out = tmp_path / "r.jsonl", tmp_path / "set"
    results_file(res, *_records(def_file))
    calls = []
    real = Path.write_text

    def full_disk(self, *a, **k):
        calls.append(self)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert main(["export", str(res), "--out", str(out)]) == 4
    assert "No space left" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".set*"))


def test_export_imports_no_torch(tmp_path, def_file):
    res, out = tmp_path / "r.jsonl", tmp_path / "set"
    results_file(res, *_records(def_file))
    code = ("import sys\nfrom attnbench.cli import main\n"
            f"rc = main(['export', {str(res)!r}, '--out', {str(out)!r}])\n"
            "assert rc == 0, rc\nassert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_solution_names_every_device_its_traces_ran_on(tmp_path, def_file, capsys):
    out = tmp_path / "set"
    files = []
    for i, gpu in enumerate(("NVIDIA H100", "NVIDIA H200")):
        files.append(tmp_path / f"r{i}.jsonl")
        results_file(files[-1], *[r for r in _records(def_file) if r.get("definition")],
                     header={"type": "header", "schema_version": 1, "tool": "attnbench", "created":
                             "2026-12-05T21:20:34+0000", "command": ["t"], "env": ENV | {"device_name": gpu},
                             "refs": None})
    assert main(["export", *map(str, files), "--out", str(out)]) == 0, capsys.readouterr().err
    sol = ft.Solution.model_validate_json(
        (out / "solutions/attnbench/gqa_paged" / DEF_NAME / "attnbench_paged_sdpa.json").read_text())
    assert sol.spec.target_hardware == ["NVIDIA_H100", "NVIDIA_H200"]
    traces = _lines(out / "traces/attnbench/gqa_paged" / f"{DEF_NAME}.jsonl")
    passed = [t for t in traces if t["evaluation"]["status"] == "PASSED"]
    assert {t["evaluation"]["environment"]["hardware"] for t in passed} == {"NVIDIA_H100", "NVIDIA_H200"}
    assert len(passed) == 4  # each device's speedup from its own reference timing
