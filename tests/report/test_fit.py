"""Terminal tables at 80 columns and narrower: whole words wrap, a number is never split, and
columns drop with a note naming them (report/fit.py) — in `show`, run's results table and
`list --models`, printed on a rich Console of the width under test."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from attnbench.cli.tables import results_table
from attnbench.report import terminal
from attnbench.report.fit import fit
from attnbench.report.formodel import list_models
from conftest import valid_record, with_catalogue


def _print(renderable_or_fn, width: int) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width)
    renderable_or_fn(console) if callable(renderable_or_fn) else console.print(renderable_or_fn)
    return buf.getvalue()


def _records() -> list[dict]:
    recs = []
    for backend, k in (("eager", 2.0), ("sdpa", 1.0)):
        for L in (256, 512, 1024, 1536):
            recs.append(valid_record(
                case_id=f"{backend}-{L}", backend=backend, seq_q=L, seq_k=L, status="ok", reason=None,
                latency_ms={"median": k * 1e-5 * L * L, "iqr": 1e-7 * L * L, "n": 20}, peak_mem_bytes=1000 * L,
                tflops=0.0123, gbps=1.5, roofline_frac=0.25, flags=[], kernel="aten::bmm",
                error={"vs": "fp64 reference", "rel_l2": 2.9e-07, "max_abs": 1e-6}))
    recs.append(valid_record(case_id="boom", backend="flex", status="error",
                             reason="RuntimeError: compile failed at /tmp/torchinductor_root/aa/" + "x" * 60
                                    + ".cpp:41:9: error: 'blend' was not declared"))
    return with_catalogue(recs)


def test_fit_keeps_words_whole_and_drops_from_the_right():
    heads, rows = ["name", "value", "note"], [["llama-3.1-405b", "2.90e-07", "a b c"]]
    kept, widths = fit(heads, rows, 80)
    assert kept == [0, 1, 2] and widths == [14, 8, 5]
    kept, widths = fit(heads, rows, 30)  # 14+3 + 8+3 + 1 = 29 fits two columns
    assert kept == [0, 1] and widths[:2] == [14, 8]
    kept, _ = fit(heads, rows, 30, drop=(1, 2))
    assert kept == [0, 2]


@pytest.mark.parametrize("width", [80, 60])
def test_show_never_splits_a_number(width):
    text = _print(lambda c: terminal.show(_records(), c, "mha:eager"), width)
    assert all(len(line) <= width for line in text.splitlines())
    assert text.count("2.90e-07") == 8 and "e-07" not in text.replace("2.90e-07", "")  # every rel. L2 whole
    assert "1.5k" in text and "1000" in text and "e+03" not in text
    assert f"left out at {width} columns:" in text


def test_run_results_table_at_80_columns_keeps_the_reason_and_says_what_it_left_out():
    text = _print(results_table(_records()), 80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "left out at 80 columns:" in text and "TFLOP/s" in text.split("left out")[1]
    assert "error" in text and "'blend' was not" in " ".join(text.split())
    for ms in ("0.655", "2.62"):  # 1e-5·L² at 256 and 512 (sdpa), whole
        assert ms in text


def test_list_models_keeps_names_whole_at_80_and_60_columns():
    for width in (80, 60):
        text = _print(lambda c: list_models(c, False), width)
        assert all(len(line) <= width for line in text.splitlines())
        for name in ("llama-3.1-405b", "deepseek-v3", "gpt-oss-120b"):
            assert name in text
        assert f"left out at {width} columns: " in text


def test_list_of_variants_at_80_columns_drops_the_description_first():
    import torch

    from attnbench.cli.tables import list_rows, variants_table

    rows = list_rows(torch.device("cpu"))
    text = _print(variants_table(rows), 80)
    assert all(len(line) <= 80 for line in text.splitlines())
    note = " ".join(text.split()).split("left out at 80 columns: ")[1]
    assert "description" in note and "backends" not in note and "variant" not in note
    for r in rows:
        assert r["name"] in text
