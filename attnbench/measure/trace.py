"""Tracing one call with torch.profiler: the named ranges, the profiler's settings, and a
Perfetto/chrome trace of one call written to a file (`run --profile-dir`, `attnbench profile`).

Ranges: the backend's setup runs inside "attnbench.setup", each profiled call inside
"attnbench.call"; variants name their own phases "<family>.<phase>" (reformer.hash,
performer.features, ...). Honest limits: the profiler adds a few microseconds per operator, so a
traced call is never a timed one; on the CPU the C++ side logs to stderr, silenced here.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile, record_function

SETUP, CALL = "attnbench.setup", "attnbench.call"
# Named ranges follow "<family>.<phase>"; torch's own annotations ("Torch-Compiled Region: 0/0",
# "ProfilerStep#3") do not match.
RANGE_NAME = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)+$")


def is_range_name(name: str) -> bool:
    return bool(RANGE_NAME.match(name))


def activities(device: torch.device) -> list:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def profiler(device: torch.device, with_stack: bool = False):
    return profile(activities=activities(device), record_shapes=True, profile_memory=True, with_stack=with_stack)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ side logs start/stop lines there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_calls(call: Callable[[], object], device: torch.device, calls: int = 1, with_stack: bool = False):
    """The call profile: `calls` calls, each inside the attnbench.call range."""
    with quiet_stderr(), profiler(device, with_stack) as prof:
        for _ in range(calls):
            with record_function(CALL):
                call()  # the output is dropped inside the range: its free is part of the call
                sync(device)
    return prof


def save_trace(call: Callable[[], object], device: torch.device, path: Path) -> Path:
    """A chrome trace of one call (already warmed up by the caller) written to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile_calls(call, device, calls=1).export_chrome_trace(str(path))
    return path
