"""The cost model: a case's peak memory and one call's time, predicted before it runs, so the
runner can skip what cannot fit or cannot finish within the budget, the plan can say what a run
will take, and `profile` can hold a measured peak against the model.

Memory (what `peak_mem_bytes` measures: one call's rise above its inputs), by backend kind:
- every call: its output (fwd, decode) or the gradients of q, k and v (bwd; fwd+bwd both);
- a fused kernel (SDPA's flash/efficient kernels, flex, Triton, online-softmax loops): two fp32
  row statistics per query row on top (max and sum), and with gradients of grouped heads dK and
  dV per query head before the groups are summed;
- a backend that materialises scores (`Backend.materializes`: eager, sdpa-math, grouped): 2.5
  fp32 (B, Hq, Lq, Lk) tensors (scores and probabilities, and a masked copy where a mask applies:
  two to three measured on the CPU), K and V repeated to Hq heads when the heads are grouped, and
  with gradients the backward's two more (the gradients of the probabilities and of the scores);
- what a backend declares beyond its kind (`Backend.workspace`: random features, chunks, a dense
  mask built per call, a peer package's copies), added as declared.
`predict_peak_bytes` adds the inputs: what the case needs in all (the skip rule, `profile`'s
absolute timeline).

Honest limits: rough by design. Allocator slack, BLAS workspaces and allocations under the
measuring threshold (CPU: blocks under 128 KiB, so decode calls read ~0) are not modelled; a
backend that holds more than its kind and declares no workspace is underestimated: every
backend of the catalogue runnable on the CPU was measured within 2× at L = 512-1024, B1 H8 D64
fp32 forward (and mha/gqa/mqa/performer/sliding_window backward and fwd+bwd), but not flex or the
Triton kernels (no compile or GPU here), nor other dtypes and shapes; decode calls read under
1 MiB on the CPU and were not compared.
A mixed batch (core/batch_spec.py): its packed ΣQ query rows, the scores of its largest request
(eager and the reference attend one request at a time), the KV counted padded (B, Hkv, max S, D);
a padded backend's time from the whole rectangle (Backend.work_flops). Checked on one spec
(2q2k_32q1s1k, H8/2 D64 fp32, CPU): eager's and sdpa's peaks within 2× (over, not under).
Time assumes attention reaches half the in-run GEMM rate (a quarter when scores are materialised);
decode and patterns with little work per byte are underestimated.
"""

from __future__ import annotations

from typing import Callable

from attnbench.core.batch_spec import peak_scores, query_rows, reference_scores
from attnbench.core.problem import Problem
from attnbench.measure.flops import mode_flops

SCORE_COPIES = 2.5  # fp32 (Lq, Lk) tensors per head a materialising forward holds: 2 plain, 3 masked
BACKWARD_SCORE_COPIES = 2.0  # the gradients of the probabilities and of the scores
# fwd+bwd: the forward's probabilities, kept for the backward, then the backward's two (measured:
# 3.0-3.1 copies at L = 512-1024 for eager, sdpa-math and grouped on the CPU)
TRAINING_SCORE_COPIES = 1.0 + BACKWARD_SCORE_COPIES


def input_bytes(p: Problem) -> float:
    """q (B, Hq, Lq, D) (a mixed batch: packed, ΣQ rows) and k, v (B, Hkv, Lk, D) in the problem's dtype."""
    return float((query_rows(p) * p.heads + 2 * p.batch * p.kv_heads * p.seq_k) * p.head_dim * p.itemsize)


def predict_call_peak_bytes(p: Problem, materializes: bool, workspace: float = 0.0) -> float:
    """One call's peak above its inputs, as `peak_mem_bytes` measures it (see the module docstring)."""
    out = query_rows(p) * p.heads * p.head_dim * p.itemsize
    grads = input_bytes(p) if p.needs_grad else 0.0
    result = (out if p.mode != "bwd" else 0.0) + grads
    rows = query_rows(p) * p.heads
    repeated = 2.0 * p.batch * p.heads * p.seq_k * p.head_dim * p.itemsize if p.kv_heads < p.heads else 0.0
    if not materializes:  # a fused backward of grouped heads: dK, dV per query head, then summed
        return result + 2 * 4 * rows + (repeated if p.needs_grad else 0.0) + workspace
    scores = 4.0 * peak_scores(p)
    copies = {"bwd": BACKWARD_SCORE_COPIES, "fwd+bwd": TRAINING_SCORE_COPIES}.get(p.mode, SCORE_COPIES)
    return result + copies * scores + repeated + workspace


def predict_peak_bytes(p: Problem, materializes: bool, workspace: float = 0.0) -> float:
    """What the case needs in all: its inputs plus one call's peak (predict_call_peak_bytes)."""
    return input_bytes(p) + predict_call_peak_bytes(p, materializes, workspace)


def predict_call_seconds(p: Problem, flops: Callable[[Problem], float], materializes: bool,
                         refs: dict | None) -> float | None:
    """One call's seconds from the in-run GEMM rate (refs: the results header's references)."""
    if not refs:
        return None
    gemm = (refs["gemm"].get(p.dtype) or refs["gemm"]["float32"])["flops_per_s"]
    efficiency = 0.25 if materializes else 0.5  # attention reaches about half the GEMM rate
    work = flops(p)
    if materializes:  # a dense (Lq, Lk) score matrix is computed whatever the mask leaves out
        work = max(work, 4.0 * reference_scores(p) * p.head_dim)
    return mode_flops(work, p.mode) / (gemm * efficiency)
