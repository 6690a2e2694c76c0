"""The library API: compute attention with any registered variant and backend; `Backend` (and the
`Problem` its build receives) for a user's own backend file (variants/user.py, `--backend-file`)."""

from __future__ import annotations

from dataclasses import replace

import torch

from attnbench.core.errors import UsageError
from attnbench.core.problem import Problem
from attnbench.variants import registry
from attnbench.variants.base import Backend, Fn

__all__ = ["Backend", "Fn", "Problem", "attend", "problem_of"]

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def problem_of(q: torch.Tensor, k: torch.Tensor, causal: bool = False, mode: str = "fwd", **params) -> Problem:
    if q.dim() != 4 or k.dim() != 4:
        raise UsageError(f"q and k must be (B, H, L, D); got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.dtype not in _DTYPE_NAMES:
        raise UsageError(f"dtype {q.dtype} not supported; accepted: float32, float16, bfloat16")
    b, h, lq, d = q.shape
    return Problem(batch=b, heads=h, kv_heads=k.shape[1], seq_q=lq, seq_k=k.shape[2], head_dim=d,
                   dtype=_DTYPE_NAMES[q.dtype], causal=causal, mode=mode,
                   params=tuple(sorted(params.items())))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: str = "mha",
           backend: str | None = None, causal: bool = False, **params) -> torch.Tensor:
    """Attention of (B, H, L, D) tensors with a registered variant and backend.

    backend=None picks the variant's first backend available on q's device. The backend's
    setup (masks, random features, compilation) runs on every call: to time, use the CLI."""
    var = registry.get(variant)
    p = var.resolve(problem_of(q, k, causal, mode="fwd", **{**var.defaults, **params}))
    if p.kv_heads != k.shape[1] or p.seq_k != k.shape[2]:
        p = replace(p, kv_heads=k.shape[1], seq_k=k.shape[2])
    reason = var.why_unsupported(p)
    if reason:
        raise UsageError(f"{variant}: {reason}")
    names = [backend] if backend else var.backend_names()
    for name in names:
        decision = registry.decide(var, name, p, q.device)  # the sweep's own rule
        if decision.runnable:
            return var.backend(name).build(p, q.device)(q, k, v)
        if backend:
            raise UsageError(f"{variant}/{name}: {decision.reason}")
    raise UsageError(f"{variant}: no backend can run this problem on {q.device.type}")
