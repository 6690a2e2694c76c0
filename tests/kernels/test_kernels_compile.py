"""Ahead-of-time compile report (attnbench.kernels.aot) and the `kernels compile` command.

The report compiles every kernel × autotune config × dtype for sm_80 and sm_90 without a GPU,
in a subprocess without TRITON_INTERPRET (tests run interpreted). It takes ~3 minutes on two
cores, once per session: every configuration in configs.py must fit and spill nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

pytest.importorskip("triton")

from attnbench.cli import kernels as cli_kernels  # noqa: E402
from attnbench.kernels import aot  # noqa: E402

ARCHS, DTYPES = ("sm_80", "sm_90"), ("float16", "bfloat16")


@pytest.fixture(scope="module")
def report() -> list[dict]:
    return aot.run_compile_report_subprocess(ARCHS, DTYPES)


@pytest.mark.slow
def test_every_configuration_compiles_fits_and_does_not_spill(report):
    bad = [r for r in report if not r["ok"]]
    assert not bad, "\n" + aot.format_rows(bad)
    for r in report:
        assert 0 < r["shared_bytes"] <= aot.SHARED_LIMITS[r["arch"]], r
        assert r["spills"] == 0 and 0 < r["registers"] <= 255, r


@pytest.mark.slow
def test_report_covers_every_kernel_arch_dtype_and_config(report):
    seen = {(r["kernel"], r["arch"], r["dtype"]) for r in report}
    names = {k.name for k in aot.all_kernels()}
    assert names >= {"flash.fwd", "flash.bwd_dkdv", "flash.bwd_dq", "decode.split", "decode.merge",
                     "block_sparse.fwd", "block_sparse.bwd_dkdv", "block_sparse.bwd_dq", "dsa_decode.split"}
    assert seen == {(n, a, d) for n in names for a in ARCHS for d in DTYPES}
    for kernel in aot.all_kernels():  # each autotune config of each list, at its head dim
        for arch in ARCHS:
            for config in kernel.configs[arch]:
                assert any(r["kernel"] == kernel.name and r["arch"] == arch
                           and r["head_dim"] == kernel.head_dims[-1]
                           and r["config"] == aot.describe(config) for r in report), (kernel, config)


def test_report_refuses_to_run_interpreted():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    with pytest.raises(RuntimeError, match="without TRITON_INTERPRET"):
        aot.compile_report(("sm_80",), ("float16",))


def test_module_entry_rejects_unknown_arch():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "attnbench.kernels.aot", "--arch", "sm_70"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "unknown arch 'sm_70'; accepted: sm_80, sm_90" in done.stderr


# ---------------------------------------------------------------- the CLI command
def _row(ok=True, **changes) -> dict:
    row = dict(kernel="flash.fwd", arch="sm_90", dtype="float16", head_dim=128,
               config="BLOCK_M=128 BLOCK_N=64 warps=8 stages=3", shared_bytes=131072,
               registers=244, spills=0, ok=ok, reason="" if ok else "spills 8 B")
    return {**row, **changes}


@pytest.fixture
def fake_report(monkeypatch):
    """Replace the 3-minute subprocess by canned rows; records the arguments it got."""
    calls, rows = [], [_row()]

    def fake(archs, dtypes, *, all_head_dims=False):
        calls.append((archs, dtypes, all_head_dims))
        return rows

    monkeypatch.setattr(aot, "run_compile_report_subprocess", fake)
    return calls, rows


def test_cli_archs_match_the_report():
    assert cli_kernels.ARCHS == aot.ARCHS and cli_kernels.DTYPES == aot.DTYPES


def test_cli_bad_arch_is_one_line_and_exit_2(fake_report):
    result = CliRunner().invoke(cli_kernels.app, ["compile", "--arch", "sm_80,sm_70"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: unknown arch 'sm_70'; accepted: sm_80, sm_90"
    assert fake_report[0] == []  # nothing compiled


def test_cli_bad_dtype_exit_2(fake_report):
    result = CliRunner().invoke(cli_kernels.app, ["compile", "--dtype", "int8"])
    assert result.exit_code == 2 and "unknown dtype 'int8'" in result.stderr


def test_cli_table_and_json(fake_report):
    calls, _ = fake_report
    result = CliRunner().invoke(cli_kernels.app, ["compile", "--arch", "sm_90", "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert "flash.fwd" in result.stdout and "128.0" in result.stdout  # shared KiB
    assert calls[-1] == (("sm_90",), ("bfloat16",), False)
    result = CliRunner().invoke(cli_kernels.app, ["compile", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == [_row()]
    assert calls[-1] == (ARCHS, DTYPES, False)


def test_cli_exit_1_when_a_row_fails(fake_report):
    fake_report[1].append(_row(ok=False, spills=8))
    result = CliRunner().invoke(cli_kernels.app, ["compile"])
    assert result.exit_code == 1 and "spills 8 B" in result.stdout
