"""The cost model: a case's peak memory and one call's time, predicted before it runs, so the
runner can skip what cannot fit or cannot finish within the budget, and `profile` can hold a
measured peak against the model.

Honest limits: rough by design. Memory counts inputs, outputs, gradients and, for backends that
materialise scores, two fp32 Lq×Lk tensors per head; workspaces and allocator slack are not
modelled. Time assumes attention reaches half the in-run GEMM rate (a quarter when scores are
materialised); decode and patterns with little work per byte are underestimated.
"""

from __future__ import annotations

from typing import Callable

from attnbench.core.problem import Problem
from attnbench.measure.flops import mode_flops


def predict_peak_bytes(p: Problem, materializes: bool) -> float:
    """Inputs, outputs and gradients, plus scores and probabilities when `materializes`."""
    q = p.batch * p.heads * p.seq_q * p.head_dim
    kv = p.batch * p.kv_heads * p.seq_k * p.head_dim
    io = (2 * q + 2 * kv) * p.itemsize * (2 if p.needs_grad else 1)
    scores = 2 * p.batch * p.heads * p.seq_q * p.seq_k * 4 if materializes else 0
    return io + scores * (1.5 if p.needs_grad else 1.0)


def predict_call_seconds(p: Problem, flops: Callable[[Problem], float], materializes: bool,
                         refs: dict | None) -> float | None:
    """One call's seconds from the in-run GEMM rate (refs: the results header's references)."""
    if not refs:
        return None
    gemm = (refs["gemm"].get(p.dtype) or refs["gemm"]["float32"])["flops_per_s"]
    efficiency = 0.25 if materializes else 0.5  # attention reaches about half the GEMM rate
    return mode_flops(flops(p), p.mode) / (gemm * efficiency)
