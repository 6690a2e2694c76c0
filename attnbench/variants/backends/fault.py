"""A fault-injection backend for attnbench's own tests; part of `mha` only when the environment
variable ATTNBENCH_TEST_BACKENDS=1 (tests/conftest.py sets it) and never listed to users.

Backend `fault` of variant `mha`, driven by the problem parameter `fault`:
    none   torch SDPA, plus ATTNBENCH_TEST_DELAY_MS of busy-waiting per call (a slowed kernel)
    oom    allocates far past the memory limit (raises an allocator error)
    sleep  sleeps past any time budget
    raise  raises RuntimeError
    wrong  torch SDPA's output scaled by 1.1: runs and times like SDPA, relative error 0.1 (a wrong kernel)
    segv   kills its own process with SIGSEGV
    kill   kills its own process with SIGKILL (as the kernel's OOM killer does)
    kill-ray-worker  the Ray worker running the case kills itself before the case (run/executors.py;
                     the attempts are appended to the file named by the parameter attempts_file)
"""

from __future__ import annotations

import os
import signal
import time

import torch
import torch.nn.functional as F

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason
from attnbench.variants.shared import sdpa_call

FAULTS = ("none", "oom", "sleep", "raise", "segv", "kill", "kill-ray-worker", "wrong")


def _build(problem: Problem, device: torch.device) -> Fn:
    fault = problem.param("fault", "none")
    delay_s = float(os.environ.get("ATTNBENCH_TEST_DELAY_MS", "0")) / 1e3
    kwargs = sdpa_call(problem)

    def fault_fn(q, k, v):
        if fault == "oom":
            return torch.empty(1 << 50, dtype=torch.uint8, device=q.device)  # 1 PiB
        if fault == "sleep":
            time.sleep(3600)
        if fault == "raise":
            raise RuntimeError("injected failure")
        if fault in ("segv", "kill"):
            os.kill(os.getpid(), signal.SIGSEGV if fault == "segv" else signal.SIGKILL)
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        if fault == "wrong":
            out = out * 1.1
        if delay_s:
            end = time.perf_counter() + delay_s
            while time.perf_counter() < end:
                pass
        return out

    return fault_fn


def _known_fault(problem: Problem, device: torch.device) -> Reason:
    fault = problem.param("fault", "none")
    return None if fault in FAULTS else f"unknown fault {fault!r}; accepted: {', '.join(FAULTS)}"


def fault_backends() -> tuple[Backend, ...]:
    """The test-only backends `mha` lists: (fault,) under ATTNBENCH_TEST_BACKENDS=1, else none."""
    if os.environ.get("ATTNBENCH_TEST_BACKENDS") != "1":
        return ()
    return (Backend("fault", _build, "test-only fault injection", test_only=True, why_unsupported=_known_fault,
                    params={"fault": "none", "attempts_file": ""}),)
