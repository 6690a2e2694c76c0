"""Reports: `attnbench report` writes every file (charts, CSV, Markdown, self-contained HTML) from a
real small CPU sweep and from synthetic results that exercise the GQA, Pareto and gallery charts;
the HTML loads in headless Chromium with every image decoded and no console message; `show`
and `show-pattern` print without writing files."""

import csv
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from attnbench.cli import main
from attnbench.core.results import RECORD_FIELDS
from attnbench.variants import registry
from attnbench.variants.registry import Variant
from attnbench.variants.shared import attention_flops, exact_reference, fill_defaults, io_bytes
from conftest import with_catalogue

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


# ---------------------------------------------------------------- synthetic results
def header() -> dict:
    return {"type": "header", "schema_version": 1, "tool": "attnbench", "created": "2025-01-01T00:00:00",
            "command": ["attnbench", "run"], "env": {"device": "cpu", "device_name": "Test CPU", "torch": "x"},
            "refs": {"gemm": {"float32": {"n": 2048, "median_ms": 1.0, "flops_per_s": 5e10}},
                     "copy": {"bytes": 1 << 28, "median_ms": 25.0, "bytes_per_s": 1e10}}}


def record(variant, backend, L, ms, *, mode="fwd", kv_heads=8, status="ok", error=None, params=None, mem=None):
    r = {f: None for f in RECORD_FIELDS}
    r.update(type="record", case_id=f"{variant}-{backend}-{L}-{mode}-{kv_heads}", variant=variant, backend=backend,
             device="cpu", dtype="float32", mode=mode, batch=1, heads=8, kv_heads=kv_heads,
             seq_q=1 if mode == "decode" else L, seq_k=L, head_dim=64, causal=False, params=params or {},
             status=status, latency_ms={"median": ms, "iqr": 0.1 * ms, "n": 10} if status == "ok" else None,
             peak_mem_bytes=mem or (64 * L * L // kv_heads if status == "ok" else None),
             kv_cache_bytes=2 * kv_heads * L * 64 * 4, tflops=0.02, gbps=1.0, roofline_frac=0.3,
             error=error, reason=None if status == "ok" else "injected")
    return r


def synthetic_records() -> list[dict]:
    recs = []
    for L in (256, 512, 1024):
        for kv, variant in ((8, "mha"), (2, "gqa"), (1, "mqa")):
            for mode, ms in (("fwd", 1e-5 * L * L * (1 + kv / 8)), ("decode", 1e-3 * L * kv / 8)):
                recs.append(record(variant, "sdpa", L, ms, mode=mode, kv_heads=kv,
                                   error={"vs": "reference", "rel_l2": 3e-7, "max_abs": 1e-6}))
        recs.append(record("mha", "eager", L, 4e-5 * L * L, error={"vs": "reference", "rel_l2": 0.0, "max_abs": 0.0}))
        for name, ms, err in (("testwindow", 5e-3 * L, 0.3), ("testbias", 2e-5 * L * L, 1e-7)):
            recs.append(record(name, "eager", L, ms, error={"vs": "reference", "rel_l2": 1e-7, "max_abs": 1e-6,
                                                             "full_rel_l2": err, "full_max_abs": 1.0},
                               params={"window": 16} if name == "testwindow" else None))
    recs.append(record("mha", "eager", 2048, 0, status="oom"))
    return recs


def write_results(path: Path, recs: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(x) for x in [header(), *recs]) + "\n")
    return path


def _window_picture(p):
    i = torch.arange(p.seq_q)[:, None]
    j = torch.arange(p.seq_k)[None, :]
    return ((i - j).abs() <= p.param("window", 16)).float()


def _bias_picture(p):
    i = torch.arange(p.seq_q)[:, None]
    j = torch.arange(p.seq_k)[None, :]
    return -0.1 * (i - j).abs().float()


@pytest.fixture
def picture_variants(monkeypatch):
    """Two registered test variants with pictures: a window mask and an ALiBi-like bias."""
    common = dict(family="test", time="O(L·w)", memory="O(L·w)", reference=exact_reference,
                  flops=attention_flops, bytes=io_bytes, backends=(), oracle="reference", full_attention_error=True,
                  resolve=fill_defaults)
    registry.names()  # load the real registry first
    monkeypatch.setitem(registry._CATALOGUE, "testwindow", Variant(
        name="testwindow", description="test window mask", picture=_window_picture, defaults={"window": 16}, **common))
    monkeypatch.setitem(registry._CATALOGUE, "testbias", Variant(
        name="testbias", description="test distance bias", picture=_bias_picture, **common))


# ---------------------------------------------------------------- checks
def check_report(out: Path) -> dict[str, list[Path]]:
    """Every written file is there and well formed; returns the charts by kind."""
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for link in re.findall(r"\]\(([^)#]+)\)", md):
        assert (out / link).is_file(), f"report.md links a missing {link}"
    pngs = sorted((out / "charts").glob("*.png"))
    assert pngs, "no charts written"
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
        assert ET.parse(png.with_suffix(".svg")).getroot().tag.endswith("svg")
    for name in ("scaling", "measurements", "environment"):
        rows = list(csv.DictReader((out / "tables" / f"{name}.csv").open()))
        assert rows, f"{name}.csv is empty"
    assert html.count('<div class="chart"') == len(pngs) and "<img" not in html  # inline SVG, one per chart
    assert not re.search(r"""(src|href)=["'](https?:|//)""", html) and "<script src" not in html and "<link" not in html
    assert not list(out.rglob(".*.tmp*")), "temporary files left behind"
    kinds: dict[str, list[Path]] = {}
    for png in pngs:
        kinds.setdefault(png.name.split("-")[0], []).append(png)
    return kinds


def chromium_load(html: Path, tmp: Path) -> tuple[str, list[str]]:
    """(document title after load, console lines) of a test copy that reports charts drawn empty."""
    probe = ("<script>window.addEventListener('load', function () {"
             " var im = Array.from(document.querySelectorAll('.chart svg'));"
             " document.title = 'charts ' + im.length + ' broken ' + im.filter(function (i) {"
             " var r = i.getBoundingClientRect(); return r.width < 100 || r.height < 50; }).length; });</script>")
    copy = tmp / "probe.html"
    copy.write_text(html.read_text().replace("</body>", probe + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>([^<]*)</title>", proc.stdout)
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    return (title.group(1) if title else proc.stdout[-300:]), console


# ---------------------------------------------------------------- synthetic report
def test_report_draws_gqa_pareto_and_gallery(tmp_path, picture_variants, capsys):
    res = write_results(tmp_path / "r.jsonl", synthetic_records())
    assert main(["report", str(res), "--out", str(tmp_path / "rep"), "--patterns"]) == 0
    kinds = check_report(tmp_path / "rep")
    assert {"latency", "memory", "tflops", "gqa", "pareto", "pattern"} <= set(kinds)
    assert {p.name for p in kinds["pattern"]} == {"pattern-testwindow.png", "pattern-testbias.png"}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Not drawn" not in md.split("## Not run")[0].split("## Crossovers")[1]
    scaling = {r["series"]: r for r in csv.DictReader((tmp_path / "rep" / "tables" / "scaling.csv").open())
               if r["mode"] == "fwd" and r["kv_heads"] == "8"}
    assert scaling["mha:eager"]["frontier"] == "ok to 1k; oom at 2k"
    assert float(scaling["mha:sdpa"]["speedup"]) == pytest.approx(2.0, rel=1e-5)  # 4e-5·L² vs 2e-5·L²


def test_report_without_optional_data_says_what_was_skipped(tmp_path):
    recs = [record("mha", "sdpa", L, 1e-5 * L * L) for L in (256, 512)]
    res = write_results(tmp_path / "r.jsonl", recs)
    assert main(["report", str(res), "--out", str(tmp_path / "rep"), "--patterns"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.count("> Not drawn:") == 4  # crossovers (one series), GQA, Pareto, gallery
    assert "No baseline: neither mha:eager nor an exact variant's eager backend ran" in md


def test_report_usage_errors(tmp_path, capsys):
    res = write_results(tmp_path / "r.jsonl", [record("mha", "sdpa", 256, 1.0)])
    assert main(["report", str(res), "--out", str(tmp_path / "o"), "--relative-to", "flash:eager"]) == 2
    assert "accepted: mha:sdpa" in capsys.readouterr().err
    assert main(["report", str(res), "--out", str(tmp_path / "o"), "--relative-to", "mha"]) == 2
    assert main(["report", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["report", str(res), "--out", str(tmp_path / "file")]) == 2


def test_show_prints_tables_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per row (narrow widths: tests/report/test_fit.py)
    res = write_results(tmp_path / "r.jsonl", synthetic_records())
    before = set(tmp_path.rglob("*"))
    assert main(["show", str(res)]) == 0
    out = capsys.readouterr().out
    assert "scaling with L" in out and "measurements" in out and "mha:eager" in out
    assert "crossovers ·" in out and "faster from L≈" in out  # testwindow (∝ L) passes gqa/mqa:sdpa (∝ L²)
    assert "none in" not in out.split("crossovers ·")[1].split("faster from")[0]  # non-crossing pairs left out
    assert set(tmp_path.rglob("*")) == before


def test_print_scaling_needs_three_lengths(tmp_path):
    from rich.console import Console

    from attnbench.report.terminal import print_scaling

    console = Console(record=True, width=160)
    recs = synthetic_records()
    assert print_scaling(with_catalogue(recs), console) is True
    assert "latency ∝ L^x" in console.export_text()
    assert print_scaling([r for r in recs if r["seq_k"] <= 512], Console(record=True)) is False


# ---------------------------------------------------------------- show-pattern
def test_show_pattern_text_and_png(tmp_path, picture_variants, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # 64 cells fit (two characters a cell without colour)
    assert main(["show-pattern", "testwindow", "--seq", "32"]) == 0
    text = capsys.readouterr().out
    assert "32×32 mask" in text and "█" in text
    assert main(["show-pattern", "testbias", "--seq", "300"]) == 0
    assert "averaged down to 60×60 cells of 5×5 positions" in capsys.readouterr().out  # 60: a divisor of 300
    out = tmp_path / "w.png"
    assert main(["show-pattern", "testwindow", "--seq", "256", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and out.with_suffix(".svg").is_file()


def test_additive_masks_and_masked_biases(tmp_path, monkeypatch):
    from attnbench.report.gallery import is_mask, picture, render, text_picture

    def additive(p):  # block-diagonal 0 / -inf: a mask written as a bias
        i, j = torch.arange(p.seq_q)[:, None], torch.arange(p.seq_k)[None, :]
        return torch.zeros(p.seq_q, p.seq_k).masked_fill(i // 8 != j // 8, float("-inf"))

    def causal_bias(p):
        i, j = torch.arange(p.seq_q)[:, None], torch.arange(p.seq_k)[None, :]
        return (-0.5 * (i - j).float()).masked_fill(j > i, float("-inf"))

    registry.names()
    for name, fn in (("testadditive", additive), ("testcausalbias", causal_bias)):
        monkeypatch.setitem(registry._CATALOGUE, name, Variant(
            name=name, family="test", description=name, time="O(L)", memory="O(L)", reference=exact_reference,
            flops=attention_flops, bytes=io_bytes, backends=(), oracle="reference", resolve=fill_defaults,
            picture=fn))
    mask, _ = picture("testadditive", 32)
    assert is_mask(mask) and float(mask.sum()) == 4 * 8 * 8
    bias, _ = picture("testcausalbias", 32)
    assert not is_mask(bias)
    text = text_picture(bias, color=False).plain
    assert "masked (-inf) drawn as the minimum" in text and "nan" not in text
    assert "▀" in text_picture(bias, color=True).plain and "▀" in text_picture(mask, color=True).plain
    png, svg = render(bias, "causal bias", tmp_path, "cb")
    assert png.read_bytes()[:8] == PNG_MAGIC and svg.is_file()


@pytest.mark.parametrize("argv,message", [
    (["show-pattern", "nosuch"], "unknown variant"),
    (["show-pattern", "mha"], "has no pattern picture"),
    (["show-pattern", "testwindow", "--seq", "0"], "lengths must be at least 1"),
    (["show-pattern", "testwindow", "--out", "x.jpg"], "must end in .png"),
])
def test_show_pattern_usage_errors(argv, message, picture_variants, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- a real CPU sweep
@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "r.jsonl"
    rc = main(["run", "--variants", "mha,flash", "--backends", "eager,sdpa-flash,sdpa", "--seq", "256..1k",
               "--time-budget", "5", "--out", str(out)])
    assert rc == 0
    return out


@pytest.mark.slow
def test_report_from_a_real_cpu_sweep(sweep, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    kinds = check_report(out)
    assert {"latency", "memory", "tflops"} <= set(kinds)
    rows = list(csv.DictReader((out / "tables" / "scaling.csv").open()))
    assert {r["series"] for r in rows} == {"mha:eager", "mha:sdpa", "mha:sdpa-flash", "flash:eager",
                                           "flash:sdpa-flash"}
    assert all(r["n_time"] == "3" and r["time_verdict"] for r in rows)
    assert "flash has no backend 'sdpa'" in (out / "tables" / "not_run.csv").read_text()

    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium): HTML not opened in a browser")
    title, console = chromium_load(out / "report.html", tmp_path)
    assert title == f"charts {len(list((out / 'charts').glob('*.png')))} broken 0"
    assert console == []
