"""The device check (`attnbench gpu-check`): its dry run on a CPU, a runner that records every
step's outcome and goes on, the docs splice, and the sinks/soft-cap forward+backward rows."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from attnbench.cli import main
from attnbench.report import gpudoc
from attnbench.run import check_mods, gpucheck
from attnbench.variants import registry
from attnbench.variants.registry import Backend

CPU = torch.device("cpu")
KERNEL_STEPS = {"check-flash", "check-block-sparse", "check-mla-decode", "check-paged-decode", "check-flash-mods"}


def test_dry_run_lists_every_step_within_nine_minutes(capsys):
    assert main(["gpu-check", "--dry-run", "--json"]) in (0, None)
    plan = json.loads(capsys.readouterr().out)
    names = [s["name"] for s in plan["steps"]]
    assert KERNEL_STEPS | {"sweep-reference", "report", "docs"} <= set(names)
    assert all(s["predicted_seconds"] > 0 and s["model"] for s in plan["steps"])
    assert plan["predicted_seconds"] == pytest.approx(sum(s["predicted_seconds"] for s in plan["steps"]), abs=0.5)
    assert plan["predicted_seconds"] <= 540 and plan["within_cap"]
    assert "not measurements" in plan["note"]
    sweep = next(s for s in plan["steps"] if s["name"] == "sweep-reference")
    assert "results/reference/" in sweep["command"] and "--suite reference" in sweep["command"]


def test_the_sweep_prediction_follows_the_cost_model():
    """A case whose call the cost model predicts longer is predicted longer (the timed loop is
    capped by sample_time, so a long call adds its three untimed calls)."""
    import torch as t

    from attnbench.run.plan import expand, make_sweep

    short, long = expand([make_sweep(variants="mha", backends="sdpa", seq="1k,64k", dtype="bfloat16", batch=4,
                                     heads=16, head_dim=128)], t.device("cuda"))
    assert gpucheck.case_seconds(long, 0.3) > gpucheck.case_seconds(short, 0.3)


def test_without_a_gpu_the_check_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["gpu-check"]) == 2
    err = capsys.readouterr().err
    assert "needs an NVIDIA GPU" in err and len(err.strip().splitlines()) == 1


def _step(name, code, needs=None, predicted=1.0):
    return gpucheck.Step(name, (sys.executable, "-c", code), predicted, "test", needs=needs)


def test_every_step_is_recorded_and_a_failure_does_not_stop_the_next(tmp_path):
    steps = [_step("fails", "import sys; print('x', file=sys.stderr); sys.exit(3)"),
             _step("hangs", "import time; time.sleep(30)", predicted=0.1),
             _step("needs-missing", "pass", needs=str(tmp_path / "absent.jsonl")),
             _step("works", "print('fine')")]
    # cap: enough for the others; the hanging step gets what the cap leaves after them
    results = gpucheck.run_all(steps, tmp_path, cap_s=4.0, echo=lambda *_: None)
    by = {r["name"]: r for r in results}
    assert by["fails"]["status"] == "failed" and "exit code 3" in by["fails"]["reason"] and "x" in by["fails"]["reason"]
    assert by["hangs"]["status"] == "timeout"
    assert by["needs-missing"]["status"] == "skipped" and "absent.jsonl" in by["needs-missing"]["reason"]
    assert by["works"]["status"] == "ok" and (tmp_path / "works.out").read_text() == "fine\n"
    logged = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [r["name"] for r in logged] == ["fails", "hangs", "needs-missing", "works"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] == 1 and summary["of"] == 4


def test_a_check_steps_rows_are_counted_in_its_outcome(tmp_path):
    rows = [{"variant": "mha", "backend": "triton", "dtype": "float32", "shape": "H4 L256", "passed": True},
            {"variant": "mla", "backend": "triton", "dtype": "bfloat16", "shape": "decode", "passed": False,
             "note": "RuntimeError: x"},
            {"variant": "paged", "backend": "triton", "dtype": "float32", "shape": "decode", "passed": None}]
    code = f"import json; print(json.dumps({rows!r}))"
    step = gpucheck.Step("check-x", (sys.executable, "-c", code), 1.0, "test", "check-x.json")
    [res] = gpucheck.run_all([step], tmp_path, cap_s=60, echo=lambda *_: None)
    assert res["status"] == "ok" and res["rows"]["passed"] == 1 and res["rows"]["not_run"] == 1
    assert res["rows"]["failed_rows"] == ["mla/triton bfloat16 decode: RuntimeError: x"]


def test_gpu_slug():
    assert gpucheck.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_docs_splice_keeps_the_rest_and_refuses_without_markers():
    doc = f"# On a GPU\nintro\n{gpudoc.BEGIN}\nold\n{gpudoc.END}\nafter\n"
    out = gpudoc.splice(doc, "new")
    assert out == f"# On a GPU\nintro\n{gpudoc.BEGIN}\nnew\n{gpudoc.END}\nafter\n"
    with pytest.raises(ValueError, match="markers"):
        gpudoc.splice("# no markers\n", "new")


def test_the_committed_gpu_doc_has_the_markers():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "gpu.md").read_text()
    assert gpudoc.BEGIN in text and gpudoc.END in text


def test_sinks_and_softcap_rows_forward_and_backward_on_the_eager_backend():
    rows = check_mods.run_mods(CPU, ("float32",), backend_name="eager")
    assert len(rows) == 2 * len(check_mods.CASES)
    assert all(r.passed for r in rows), rows
    assert sum(r.shape.endswith("bwd") for r in rows) == len(check_mods.CASES)


def test_a_wrong_gradient_fails_the_backward_check():
    var = registry.get("mha")
    p = check_mods.mods_problem(var, {"softcap": 30.0}, "float32", "fwd+bwd")
    good = var.backend("eager")

    def wrong_backward(problem, device):
        fn = good.build(problem, device)
        # same forward values, gradient scaled by 1.01: the forward check cannot see it
        return lambda q, k, v: fn(q, k, v) * 1.01 - fn(q, k, v).detach() * 0.01

    row = check_mods.check_backward(var, Backend("eager", wrong_backward), p, CPU)
    assert row.passed is False and row.max_abs > row.bound


def test_triton_rows_without_a_gpu_are_unavailable_with_the_reason():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    rows = check_mods.run_mods(CPU, ("float32",))
    assert rows and all(r.passed is None and r.note.startswith("unavailable") for r in rows)


def test_docs_section_names_the_committed_file_and_relinks_the_charts(tmp_path):
    from conftest import results_file, valid_record

    doc = tmp_path / "docs" / "gpu.md"
    report = tmp_path / "docs" / "gpu-reference"
    (report / "charts").mkdir(parents=True)
    (report / "report.md").write_text("# attnbench report\n\n![latency](charts/latency.svg)\n[x](https://e.org)\n")
    doc.write_text(f"# On a GPU\n{gpudoc.BEGIN}\n(none)\n{gpudoc.END}\n")
    ref = tmp_path / "ref.jsonl"
    results_file(ref, valid_record())
    assert gpudoc.main([str(ref), str(report), str(doc)]) == 0
    text = doc.read_text()
    assert "## attnbench report" in text and "](gpu-reference/charts/latency.svg)" in text
    assert "(https://e.org)" in text and "0 of 1 cases measured" in text and "(none)" not in text
    assert gpudoc.main([str(ref), str(report), str(tmp_path / "missing.md")]) == 2


def test_an_early_step_is_not_starved_for_the_later_ones():
    steps = [_step("a", "pass", predicted=100.0), _step("b", "pass", predicted=400.0)]
    deadline = gpucheck.time.monotonic() + 300.0  # the cap is shorter than the predictions
    assert gpucheck.step_timeout(0, steps, deadline) == pytest.approx(100.0, abs=1)
    assert gpucheck.step_timeout(0, steps, gpucheck.time.monotonic() + 900.0) == pytest.approx(300.0, abs=1)
    assert gpucheck.step_timeout(1, steps, deadline) == pytest.approx(300.0, abs=1)  # what is left


def test_check_mods_without_a_gpu_refuses_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert check_mods.main(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
