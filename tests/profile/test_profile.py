"""`attnbench profile`: operator tables, trace, memory timeline, named ranges, errors.

CPU only and small; no timing assertions (CPU timings here are noisy)."""

import json
import math
import shutil

import pytest
import torch
from torch.profiler import record_function

from attnbench.cli import main
from attnbench.core.errors import UsageError
from attnbench.profile import call as profiling
from attnbench.profile import memory as pm
from attnbench.profile import nsight as ns
from attnbench.variants import registry

MiB = 2**20


def _case(variant="mha", backend="eager", **axes):
    return profiling.resolve_case(variant, backend, torch.device("cpu"), **axes)


def _registered(name: str) -> bool:
    try:
        registry.get(name)
    except UsageError:
        return False
    return True


def test_eager_profile_lists_matmul_and_softmax_and_writes_a_trace(tmp_path, cpu):
    r = profiling.profile_case(_case(seq=256, heads=2), cpu, tmp_path, warmup=1, top=8)
    names = [row.name for row in r.ops]
    assert {"aten::bmm", "aten::matmul"} & set(names), names
    assert any("softmax" in n for n in names), names
    assert "materialised scores" in r.path
    assert r.agreement in ("agree", "partly", "disagree") and r.detected
    events = pm.trace_events(tmp_path / "trace.json")
    assert any(e.get("name") == profiling.CALL for e in events)
    assert any(e.get("name") == "aten::bmm" for e in events)
    assert (tmp_path / "memory.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["case"]["seq_q"] == 256 and summary["memory"]["peak"] == r.memory.peak
    assert [p.name for p in r.phases] == [profiling.SETUP, profiling.CALL]


def _textbook(q, k, v):
    """Scores and probabilities alive together: the two L×L tensors of eager attention."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, L, L)
    probs = torch.softmax(scores, dim=-1)  # (B, H, L, L)
    return torch.matmul(probs, v)


def test_memory_timeline_peak_is_two_score_tensors(tmp_path, cpu):
    L = 2048
    case = _case(seq=L, heads=1, head_dim=64)
    q, k, v = (torch.randn(1, 1, L, 64) for _ in range(3))
    prof = profiling.profile_calls(lambda: _textbook(q, k, v), cpu)
    prof.export_chrome_trace(str(tmp_path / "trace.json"))
    m = pm.analyse(tmp_path / "trace.json", case, cpu, inputs_bytes=3 * L * 64 * 4)
    two = 2 * L * L * 4  # 32 MiB
    assert abs(m.rise - two) <= 0.2 * two, m.rise / MiB
    assert m.baseline == 3 * L * 64 * 4 and m.peak == m.baseline + m.rise
    assert m.steps and max(s[2] for s in m.steps) == L * L * 4  # one L×L fp32 step, attributed
    by_op = {a.op: a for a in m.allocations}
    assert by_op["aten::_softmax"].bytes == L * L * 4 and "[1, 1, 2048, 2048]" in by_op["aten::_softmax"].shapes
    assert {"aten::bmm", "aten::mul"} <= set(by_op)
    pm.chart(m, tmp_path / "memory.png", "textbook")
    assert (tmp_path / "memory.png").stat().st_size > 10_000


def test_mha_eager_peak_at_2k_is_two_score_tensors(tmp_path, cpu):
    r = profiling.profile_case(_case(seq=2048, heads=1, head_dim=64), cpu, tmp_path, warmup=1)
    two = 2 * 2048 * 2048 * 4
    assert abs(r.memory.rise - two) <= 0.2 * two, r.memory.rise / MiB


def test_named_ranges_are_discovered_generically(tmp_path, cpu):
    x = torch.randn(64, 64)

    def call():
        with record_function("toy.hash"):
            y = x @ x
        with record_function("Torch-Compiled Region: 0/0"):  # torch's own: not a phase
            y = y + 1
        for _ in range(2):
            with record_function("toy.attend"):
                y = torch.softmax(y, -1) @ x
        return y

    prof = profiling.profile_calls(call, cpu)
    rows = {p.name: p for p in profiling.phase_rows(prof.events(), "call", profiling.CALL)}
    assert set(rows) == {profiling.CALL, "toy.hash", "toy.attend"}
    assert rows["toy.attend"].calls == 2 and rows[profiling.CALL].share == 1.0
    assert 0 < rows["toy.hash"].share < 1
    prof.export_chrome_trace(str(tmp_path / "t.json"))
    m = pm.analyse(tmp_path / "t.json", _case(seq=64, heads=1), cpu, 0)
    assert {s[0] for s in m.spans} == {"toy.hash", "toy.attend"}
    assert {a.phase for a in m.allocations} >= {"toy.hash", "toy.attend"}


@pytest.mark.parametrize("variant,phases", [
    ("reformer", {"reformer.hash", "reformer.sort", "reformer.attend"}),
    ("performer", {"performer.features", "performer.products"}),
])
def test_variant_phases_appear_by_name(variant, phases, tmp_path, cpu):
    if not _registered(variant):
        pytest.skip(f"{variant} is not registered yet")
    backend = registry.get(variant).backend_names()[0]
    r = profiling.profile_case(_case(variant, backend, seq=256, heads=1), cpu, tmp_path, warmup=1)
    assert phases <= {p.name for p in r.phases}, [p.name for p in r.phases]


def test_save_case_trace_names_the_file_by_case_id(tmp_path, cpu):
    from attnbench.run.worker import base_record

    case = _case(backend="sdpa", seq=128, heads=2)
    path = profiling.save_case_trace(case, cpu, tmp_path / "traces")
    assert path.name == base_record(case, cpu)["case_id"] + ".json"
    assert any(e.get("name") == profiling.CALL for e in pm.trace_events(path))
    _, call, _ = profiling.prepare(case, cpu, setup_prof=False)  # the worker passes its built call
    again = profiling.save_case_trace(case, cpu, tmp_path / "traces", call=call)
    assert again == path and any(e.get("name") == "aten::_scaled_dot_product_flash_attention_for_cpu"
                                 for e in pm.trace_events(again))


def test_cli_profile_prints_the_tables(tmp_path, capsys):
    rc = main(["profile", "--variants", "mha", "--backends", "eager", "--seq", "128", "--heads", "2",
               "--warmup", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    for text in ("top operators by self CPU time", "attention ran as", "kernel field", "memory:", "trace.json"):
        assert text in out
    assert (tmp_path / "trace.json").exists() and (tmp_path / "memory.png").exists()


def _one_line_error(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err


def test_unsupported_case_is_one_line_exit_2(tmp_path, capsys):
    _one_line_error(capsys, ["profile", "--variants", "mha", "--kv-heads", "2", "--seq", "64", "--out", str(tmp_path)],
                    "unsupported", "kv_heads")


def test_nsys_without_nsys_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    _one_line_error(capsys, ["profile", "--variants", "mha", "--seq", "64", "--nsys", "--out", str(tmp_path)],
                    "nsys", "not installed")
    assert not (tmp_path / "trace.json").exists()


def test_ncu_without_cuda_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    _one_line_error(capsys, ["profile", "--variants", "mha", "--seq", "64", "--ncu", "--device", "cpu"],
                    "ncu", "CUDA")


def test_bad_inputs_are_usage_errors(capsys):
    _one_line_error(capsys, ["profile", "--variants", "mha", "--seq", "1k..4k"], "one --seq")
    _one_line_error(capsys, ["profile", "--variants", "mha", "--param", "window=8"], "no parameter 'window'")
    _one_line_error(capsys, ["profile", "--variants", "mha", "--param", "window"], "name=value")


def test_nsight_command_rebuilds_the_same_case(cpu):
    case = _case("gqa", "sdpa", seq=512, kv_seq=256, heads=8, kv_heads=2, causal=True, modes="fwd+bwd")
    cmd = ns.command("ncu", __import__("pathlib").Path("/tmp/x"), case, torch.device("cuda"), 1, 2)
    assert cmd[:3] == ["ncu", "--nvtx", "--nvtx-include"] and cmd[-1] == "--nvtx-only"
    args = cmd[cmd.index("profile") + 1:]
    opt = {a: b for a, b in zip(args, args[1:]) if a.startswith("--")}
    axes = {"seq": int(opt["--seq"]), "kv_seq": int(opt["--kv-seq"]), "heads": int(opt["--heads"]),
            "kv_heads": int(opt["--kv-heads"]), "batch": int(opt["--batch"]), "head_dim": int(opt["--head-dim"]),
            "dtype": opt["--dtype"], "causal": "--causal" in args, "modes": opt["--mode"]}
    assert profiling.resolve_case("gqa", "sdpa", cpu, **axes) == case


def test_verdict_names_the_largest_allocations():
    case = _case(seq=64, heads=1)
    big = (pm.Allocation("aten::masked_fill", "aten::empty", 64 * MiB, 1, "[1, 8, 2048, 2048]", "mask.build"),)
    far_above = pm.verdict(200 * MiB, 100 * MiB, 2.0, big, case)
    assert "2.0× the memory model" in far_above and "aten::masked_fill" in far_above and "mask.build" in far_above
    far_below = pm.verdict(50 * MiB, 100 * MiB, 0.5, big, case)
    assert "2.0× below" in far_below and "2.5 fp32 Lq×Lk tensors" in far_below  # eager materialises
    assert pm.verdict(120 * MiB, 100 * MiB, 1.2, big, case) is None
    assert pm.verdict(300 * 1024, 100 * 1024, 3.0, big, case) is None  # KiB-sized differences are noise
