"""Tiny user backend files for the tests of `--backend-file` (written by the tests into tmp_path).

GOOD: a plain materialised softmax attention in torch (grouped K/V heads, bottom-right causal),
plus an optional busy-wait per call (DELAY_MS) to make a deliberately slowed version of the same
kernel; WRONG: returns V scaled, far from attention."""

GOOD = '''
import time

import torch

from attnbench.api import Backend

DELAY_MS = {delay}


def build(problem, device):
    scale = problem.head_dim ** -0.5

    def fn(q, k, v):
        if k.shape[1] != q.shape[1]:
            g = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        s = (q @ k.transpose(-1, -2)).float() * scale
        if problem.causal:
            lq, lk = s.shape[-2:]
            s = s.masked_fill(~torch.ones(lq, lk, dtype=torch.bool, device=s.device).tril(lk - lq), float("-inf"))
        out = torch.softmax(s, -1).to(q.dtype) @ v
        end = time.perf_counter() + DELAY_MS / 1e3
        while time.perf_counter() < end:
            pass
        return out

    return fn


BACKENDS = {{"mha": [Backend(name="{name}", build=build, description="plain softmax attention")]}}
'''

WRONG = '''
from attnbench.api import Backend

BACKENDS = {"mha": [Backend(name="my-wrong", build=lambda problem, device: lambda q, k, v: v * 1.5)]}
'''


def good(name: str = "my-softmax", delay_ms: float = 0.0) -> str:
    return GOOD.format(name=name, delay=delay_ms)
