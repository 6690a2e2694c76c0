"""The command line's conventions: --version, shell completion, readable metavars and
examples in every --help, one length grammar, list's reasons, show --json, show-pattern fitted
to the terminal and warning when a length is too short, "not run" for the peers suite."""

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from attnbench.cli import main
from attnbench.cli.reasons import unavailable_reasons

ROOT = Path(__file__).resolve().parents[2]
# run `attnbench ...` in a fresh interpreter, with argv[0] = attnbench (completion keys on it)
ENTRY = "import sys; sys.argv[0] = 'attnbench'; from attnbench.cli import main; sys.exit(main(sys.argv[1:]))"


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, **env})


# ---------------------------------------------------------------- --version, completion
def test_version_prints_the_installed_versions(capsys):
    assert main(["--version"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first == f"attnbench {metadata.version('attnbench')}"
    assert second.startswith(f"torch {metadata.version('torch')}, triton ")


def test_version_imports_no_torch():
    code = ("import sys; from attnbench.cli import main; rc = main(['--version']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("attnbench "), r.stderr[-2000:]


def test_completion_script_and_completions():
    # without shell detection (the test's parent may be any shell) the flag takes the shell's name
    r = cli("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert r.returncode == 0, r.stderr
    assert "complete -o default -F _attnbench_completion attnbench" in r.stdout
    assert "_ATTNBENCH_COMPLETE=complete_bash" in r.stdout
    r = cli(_ATTNBENCH_COMPLETE="complete_bash", COMP_WORDS="attnbench show-p", COMP_CWORD="1")
    assert r.stdout.split() == ["show-pattern"], r.stderr
    r = cli(_ATTNBENCH_COMPLETE="complete_bash", COMP_WORDS="attnbench compare --thr", COMP_CWORD="2")
    assert r.stdout.split() == ["--threshold"], r.stderr


# ---------------------------------------------------------------- --help of every command
COMMANDS = [["list"], ["env"], ["report"], ["show"], ["show-pattern"], ["compare"], ["gate"], ["ab"], ["frontier"],
            ["check"], ["profile"], ["ring"], ["merge"], ["kernels", "compile"], ["baseline", "save"],
            ["baseline", "path"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_has_readable_metavars_and_examples(cmd, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no wrapped example lines
    assert main([*cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert not re.findall(r"<(?:int|float|str|bool|path|list\[[^\]]*\])>", out), out  # typer's Python types
    assert "{" not in out.split("\n", 3)[1]  # the usage line: BASELINE, not {baseline}
    assert "Examples:" in out, out
    examples = [ln for ln in out.split("Examples:", 1)[1].split("╭", 1)[0].splitlines() if ln.strip()]
    assert 2 <= len(examples) <= 4, out
    assert all("attnbench " in ln and ln.startswith("   ") for ln in examples), examples  # indented commands


def test_compare_usage_names_its_arguments(capsys):
    assert main(["compare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "compare [OPTIONS] BASELINE CURRENT" in out  # prog name: pytest here
    assert main(["report", "--help"]) == 0
    assert "[OPTIONS] [RESULTS...]" in capsys.readouterr().out


def test_root_help_has_examples_the_grammar_and_no_color(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "attnbench show-pattern bigbird --seq 4k" in out and "1k..64k" in out and "NO_COLOR" in out
    assert "--version" in out and "--install-completion" in out and "--show-completion" in out


# ---------------------------------------------------------------- show-pattern
def test_show_pattern_takes_4k_and_fits_the_terminal(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["show-pattern", "bigbird", "--seq", "4k"]) == 0
    out, err = capsys.readouterr()
    picture = out.split("4096×4096 mask")[0].splitlines()
    assert picture and max(len(ln) for ln in picture) <= 60  # two characters a cell without colour: <= 30 cells
    assert "averaged down to 16×16 cells of 256×256 positions" in " ".join(out.split())  # a divisor of 4096
    assert max(len(ln) for ln in out.splitlines()) <= 60
    assert "warning" not in err  # 15 % of the pairs at 4k: the pattern shows


def test_show_pattern_any_attended_pair_is_never_blank():
    import torch

    from attnbench.report.gallery import text_picture

    t = torch.zeros(256, 256)
    t[5, 200] = 1  # one attended pair in a 64×64 block of 4096
    text = text_picture(t, color=False, cells=4).plain
    assert text.splitlines()[0] == "      ░░" and "cells of 64×64 positions" in text


def test_show_pattern_warns_when_too_short_and_suggests_a_computed_length(capsys):
    assert main(["show-pattern", "bigbird", "--seq", "512"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    from attnbench.report.gallery import picture

    t, _ = picture("bigbird", 2048)
    assert "bigbird at L=512 attends 96.9 % of the pairs, 8 blocks of 64: too short" in err
    assert f"try --seq 2k ({100 * float(t.mean()):.1f} % attended)" in err  # 1k is 55 % dense: not sparse


@pytest.mark.parametrize("seq,message", [("1k..4k", "draws one length"), ("4x", "bad --seq value '4x'"),
                                         ("0", "lengths must be at least 1")])
def test_show_pattern_bad_lengths(seq, message, capsys):
    assert main(["show-pattern", "bigbird", "--seq", seq]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- list
def _row(name, *backends):
    return {"name": name, "backends": [{"name": b, "available": why is None, "reason": why} for b, why in backends]}


def test_list_reasons_are_deduplicated():
    long = "no CUDA device (the Triton kernels run on NVIDIA GPUs; `attnbench check` runs them interpreted)"
    rows = [_row("mha", ("eager", None), ("sdpa-cudnn", "sdpa-cudnn exists only on CUDA devices"),
                 ("sdpa-efficient", "sdpa-efficient exists only on CUDA devices"), ("triton", long)),
            _row("flash", ("triton", long)), _row("ring", ("triton", "no CUDA device")),
            _row("x", ("peer:p", "needs the package p (pip install p), not installed here"))]
    r = unavailable_reasons(rows)
    assert r.notes == ("✗¹ sdpa-cudnn, sdpa-efficient: exists only on CUDA devices", f"✗² triton: {long}",
                       "✗³ peer:p: needs the package p (pip install p), not installed here")
    assert r.inline[("mha", "sdpa-cudnn")] == r.inline[("mha", "sdpa-efficient")] == "¹"
    assert r.inline[("mha", "triton")] == r.inline[("flash", "triton")] == "²"
    assert r.inline[("ring", "triton")] == " (no CUDA device)"  # short and given once: inline
    assert ("mha", "eager") not in r.inline


def test_list_table_shows_each_reason_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["list", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert main(["list", "--device", "cpu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    r = unavailable_reasons(rows)
    for note in r.notes:
        assert out.count(note.split(": ", 1)[1]) == 1  # below the table, once
    assert out.count("✗") == sum(not b["available"] for x in rows for b in x["backends"]) + len(r.notes)


# ---------------------------------------------------------------- show --json
def _rec(backend, L, ms, mem):
    return {"case_id": f"{backend}-{L}", "variant": "mha", "backend": backend, "device": "cpu", "dtype": "float32",
            "mode": "fwd", "batch": 1, "heads": 8, "kv_heads": 8, "seq_q": L, "seq_k": L, "head_dim": 64,
            "causal": False, "params": {}, "status": "ok", "latency_ms": {"median": ms, "iqr": 0.0, "n": 10},
            "peak_mem_bytes": mem}


def test_show_json_holds_every_table(tmp_path, capsys):
    from attnbench.core import results

    recs = [_rec("eager", L, 1e-5 * L * L, 32 * L * L) for L in (256, 512, 1024, 2048)]
    recs += [_rec("sdpa", L, 3e-6 * L * L + 1.0, 2048 * L) for L in (256, 512, 1024, 2048)]
    recs.append({**_rec("sdpa-cudnn", 256, None, None), "status": "unavailable",
                 "reason": "sdpa-cudnn exists only on CUDA devices", "latency_ms": None})
    path = tmp_path / "r.jsonl"
    with results.Writer(path, results.make_header(["t"], {}, None)) as w:
        for r in recs:
            w.write({**{f: None for f in results.RECORD_FIELDS if f != "type"}, **r})
    assert main(["show", str(path), "--json"]) == 0

    def no_nan(x):
        raise AssertionError(f"{x} is not JSON")

    doc = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    assert set(doc) == {"baseline", "baseline_note", "scaling", "measurements", "crossovers", "not_run", "wrong"}
    assert doc["baseline"] == "mha:eager" and doc["baseline_note"] is None
    assert {(r["series"], r["metric"]) for r in doc["scaling"]} >= {("mha:sdpa", "latency"), ("mha:eager", "memory")}
    m = {(r["series"], r["L"]): r for r in doc["measurements"]}
    assert m[("mha:sdpa", 2048)]["speedup"] == pytest.approx(1e-5 * 2048**2 / (3e-6 * 2048**2 + 1.0))
    assert [r["series"] for r in doc["not_run"]] == ["mha:sdpa-cudnn"]
    assert [(c["a"], c["b"]) for c in doc["crossovers"]] == [("mha:eager", "mha:sdpa")]  # sdpa's +1 ms: slower at 256


# ---------------------------------------------------------------- "not run", never "miss"
def test_peer_targets_are_not_run_without_the_peers_suite():
    from attnbench.report.peers import peer_targets, peers_suite_ran

    def dec(backend, hkv, ms):
        return {"status": "ok", "variant": "gqa", "backend": backend, "mode": "decode", "heads": 32,
                "kv_heads": hkv, "dtype": "float32", "latency_ms": {"median": ms}, "kv_cache_bytes": 1e6,
                "flops": 1e6, "seq_q": 1, "causal": False, "params": {}}

    recs = [dec("sdpa", 8, 10.0), dec("grouped", 8, 9.0)]  # 1.1×: a miss of "≥ 3×" were it the suite
    assert not peers_suite_ran([{"command": ["attnbench", "run", "--variants", "gqa"]}], recs)
    assert peers_suite_ran([{"command": ["attnbench", "run", "--suite", "peers"]}], recs)
    judged = {t.what: t for t in peer_targets(recs, None, suite_ran=True)}
    assert judged["decode: grouped vs SDPA enable_gqa (Hkv ≤ 8)"].mark == "miss"
    targets = peer_targets(recs, None, suite_ran=False)
    assert {t.mark for t in targets} == {"not run"}
    t = {t.what: t for t in targets}["decode: grouped vs SDPA enable_gqa (Hkv ≤ 8)"]
    assert t.measured == "Hkv=8: 1.1× (other cases than the suite's)"
    assert f"{t.mark} ({t.note})" == "not run (run the peers suite: attnbench run --suite peers)"


def test_peer_targets_stay_out_of_a_users_report(tmp_path):
    from attnbench.report.build import _peers

    recs = [{"status": "ok", "variant": "gqa", "backend": b, "mode": "decode", "heads": 32, "kv_heads": 8,
             "dtype": "float32", "latency_ms": {"median": ms}, "kv_cache_bytes": 1e6, "flops": 1e6, "seq_q": 1,
             "causal": False, "params": {}} for b, ms in (("sdpa", 10.0), ("grouped", 9.0), ("peer:x", 9.5))]
    (tmp_path / "tables").mkdir()
    assert _peers([{"command": ["attnbench", "run", "--variants", "gqa"]}], recs, tmp_path) == []
    (section,) = _peers([{"command": ["attnbench", "run", "--suite", "peers"]}], recs, tmp_path)
    assert section.title == "Against the peers" and section.tables[0].rows
    assert _peers([{"command": ["attnbench", "run", "--suite", "peers"]}], [], tmp_path) == []  # nothing measured
