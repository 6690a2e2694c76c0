"""`attnbench cp-plan`: the table, infeasible strategies with reasons, the chart, bad input."""

from __future__ import annotations

import json

import pytest

from attnbench.cli import main


def test_llama_at_1m_tokens_prints_predictions_and_draws(tmp_path, capsys):
    png = tmp_path / "cp.png"
    assert main(["cp-plan", "--model", "llama-3-70b", "--seq", "1m", "--gpus", "8..1024", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "PREDICTED" in out and "★ best" in out
    assert "no: Ulysses degree 128 must divide the query heads (64)" in out
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_json_marks_every_row_predicted_and_infeasible_memory(capsys):
    assert main(["cp-plan", "--seq", "4m", "--gpus", "8", "--json", "--link", "400gbe"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["predicted"] and any("400 GbE" in a for a in data["assumptions"])
    assert all(r["predicted"] and not r["feasible"] and "GiB per GPU" in r["reason"] for r in data["rows"])


def test_custom_link_overrides_the_preset(capsys):
    assert main(["cp-plan", "--seq", "128k", "--gpus", "64", "--json", "--link-bandwidth", "1",
                 "--link-latency", "100"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any("custom 1 GB/s, α=100 µs" in a for a in data["assumptions"])


@pytest.mark.parametrize("args,msg", [
    (["--link", "warp"], "unknown link 'warp'"), (["--overlap", "1.5"], "--overlap"),
    (["--gpus", "8..4"], "--gpus"), (["--model", "nope"], "unknown model"),
    (["--attn-tflops", "0"], "--attn-tflops"),
])
def test_bad_input_is_one_line_and_exit_2(args, msg, capsys):
    assert main(["cp-plan", *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_rates_from_a_results_file(tmp_path, capsys):
    f = tmp_path / "gpu.jsonl"
    rows = [{"kind": "header"},
            {"status": "ok", "tflops": 500.0, "causal": True, "seq_q": 8192, "variant": "flash", "backend": "fa2"},
            {"status": "ok", "tflops": 900.0, "causal": True, "seq_q": 1024, "variant": "flash", "backend": "fa2"},
            {"status": "ok", "tflops": 999.0, "causal": False, "seq_q": 65536, "variant": "mha", "backend": "x"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["cp-plan", "--seq", "128k", "--gpus", "8", "--json", "--rates", str(f)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any("500 TFLOP/s measured (flash/fa2, L=8192" in a for a in data["assumptions"])
    assert main(["cp-plan", "--rates", str(tmp_path / "none.jsonl")]) == 2
