"""Re-run a profiled case under NVIDIA Nsight Systems (`nsys`) or Nsight Compute (`ncu`).

The tool re-launches `python -m attnbench profile ... --nvtx-only` with the resolved problem
spelled out, so the child builds the same case; the child runs setup, warmup and the measured
calls inside NVTX ranges (``attnbench.setup``, ``attnbench.warmup``, ``attnbench.call``) and no
torch.profiler (both would use CUPTI). nsys records the whole run (CUDA API, kernels, NVTX);
ncu profiles only the kernels inside ``attnbench.call`` (``--nvtx-include attnbench.call/``).

Limits: written against the documented CLIs of nsys 2023+/ncu 2023+, not exercised on this
project's CPU-only machines; the commands are printed so they can be rerun with other options.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

from attnbench.run.plan import Case

TOOLS = {"nsys": "Nsight Systems", "ncu": "Nsight Compute"}


def unavailable(tool: str, device: torch.device) -> str | None:
    """Why `--nsys` / `--ncu` cannot run here (one line), or None."""
    if shutil.which(tool) is None:
        return (f"--{tool}: '{tool}' ({TOOLS[tool]}) is not installed or not on PATH; install the NVIDIA "
                f"{TOOLS[tool]} CLI, or drop --{tool}")
    if device.type != "cuda":
        return f"--{tool} needs a CUDA device (this profile runs on {device.type}); drop --{tool} or use --device cuda"
    return None


def inner_args(case: Case, device: torch.device, warmup: int, calls: int) -> list[str]:
    """`attnbench profile` arguments that rebuild exactly this resolved case."""
    p = case.problem
    args = ["--variant", case.variant, "--backend", case.backend,
            "--seq", str(p.seq_k if p.mode == "decode" else p.seq_q), "--batch", str(p.batch),
            "--heads", str(p.heads), "--kv-heads", str(p.kv_heads), "--head-dim", str(p.head_dim),
            "--dtype", p.dtype, "--causal" if p.causal else "--no-causal", "--mode", p.mode,
            "--device", device.type, "--warmup", str(warmup), "--calls", str(calls), "--nvtx-only"]
    if p.mode != "decode":
        args[6:6] = ["--kv-seq", str(p.seq_k)]
    for name, value in p.params:
        args += ["--param", f"{name}={value}"]
    return args


def command(tool: str, out_dir: Path, case: Case, device: torch.device, warmup: int, calls: int) -> list[str]:
    child = [sys.executable, "-m", "attnbench", "profile", *inner_args(case, device, warmup, calls)]
    if tool == "nsys":
        return ["nsys", "profile", "-o", str(out_dir / "nsys"), "--force-overwrite", "true",
                "--trace", "cuda,nvtx,osrt", *child]
    return ["ncu", "--nvtx", "--nvtx-include", "attnbench.call/", "--target-processes", "all",
            "-o", str(out_dir / "ncu"), "-f", *child]


def run(tool: str, out_dir: Path, case: Case, device: torch.device, warmup: int,
        calls: int) -> tuple[int, list[str], Path]:
    """Run the tool; (exit code, the command, the report it writes)."""
    cmd = command(tool, out_dir, case, device, warmup, calls)
    rc = subprocess.run(cmd, check=False).returncode
    return rc, cmd, out_dir / ("nsys.nsys-rep" if tool == "nsys" else "ncu.ncu-rep")


def run_nvtx_only(case: Case, device: torch.device, warmup: int, calls: int) -> None:
    """The child's work: setup, warmup and the calls, each phase in an NVTX range."""
    from attnbench.measure.trace import CALL, SETUP
    from attnbench.profile.call import prepare

    nvtx = torch.cuda.nvtx
    nvtx.range_push(SETUP)
    _, call, _ = prepare(case, device, setup_prof=False)
    nvtx.range_pop()
    nvtx.range_push("attnbench.warmup")
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    nvtx.range_pop()
    for _ in range(calls):
        nvtx.range_push(CALL)
        call()
        torch.cuda.synchronize()
        nvtx.range_pop()
