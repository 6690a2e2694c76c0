"""The environment a result depends on, captured once per run."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from attnbench import __version__
from attnbench.core.results import FINGERPRINT_FIELDS, fingerprint  # noqa: F401  (re-exported)


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def capture(device: torch.device) -> dict:
    from attnbench.measure.telemetry import Nvml

    env = {
        "attnbench": __version__, "git_commit": _git_commit(),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "triton": _triton_version(),
        "cuda": torch.version.cuda, "device": device.type,
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device_name": None, "driver": None, "nvml": None,
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["capability"] = "sm_%d%d" % torch.cuda.get_device_capability(device)
    else:
        env["device_name"] = env["cpu_model"]
    nvml = Nvml()
    env["nvml"] = "available" if nvml.ok else nvml.reason
    if nvml.ok:
        try:
            env["driver"] = nvml._nv.nvmlSystemGetDriverVersion()
        except Exception as e:  # old drivers lack the call: say so rather than guess
            env["driver"] = f"unknown ({type(e).__name__})"
    return env
