"""The inputs of a case (`attnbench run --inputs NAME`) and how peaked their exact attention is.

- ``randn`` (the default): q, k, v ~ N(0, 1). At D = 64 the logits q·k/√D have standard deviation
  1, so exact attention is near-uniform (mean normalised entropy 0.94 at L = 4k, H = 8) and its output
  is small (RMS ≈ 1/√L): an approximation's relative error then looks large, and one that returns
  the mean of V is close to the answer. Honest for timing; unlike a trained model's attention.
- ``peaked``: attention shaped like a trained model's. q is scaled per query head by a temperature
  from 1 to 3 (geometric across heads: logits with standard deviation 1..3), and attention sinks:
  key 0 and every 256th key share a direction with every query, adding +4 to their logits (as the
  first token does in trained language models). Mean normalised entropy 0.63 at L = 4k, H = 8.

make_inputs builds a case's (q, k, v) from these (run/case.py, check, profile, the ring's ranks).
Each record names its inputs (`inputs`) and carries the exact attention's mean normalised entropy
(`attn_entropy`: the mean over query rows of H(p)/log(visible keys); 1 = uniform, 0 = one key).
The same seed gives the same inputs on every backend.
"""

from __future__ import annotations

import math

import torch

from attnbench.core.problem import Problem

INPUTS = ("randn", "peaked")
SINK_EVERY = 256  # key 0 and every SINK_EVERY-th key is a sink
SINK_LOGIT = 4.0  # logit added to a sink for every query
TEMPERATURES = (1.0, 3.0)  # query scale of the first and the last head


def check_inputs(name: str) -> str:
    from attnbench.core.errors import UsageError

    if name not in INPUTS:
        raise UsageError(f"unknown --inputs '{name}'; accepted: {', '.join(INPUTS)}")
    return name


def generate(name: str, shape_q: tuple, shape_kv: tuple, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(q, k, v) in float32 on the CPU: randn, or peaked (see the module docstring)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(s, generator=g) for s in (shape_q, shape_kv, shape_kv))
    if name == "randn":
        return q, k, v
    b, hq, lq, d = shape_q
    hkv, lk = shape_kv[1], shape_kv[2]
    lo, hi = TEMPERATURES
    temps = torch.tensor([lo * (hi / lo) ** (h / max(hq - 1, 1)) for h in range(hq)])
    q = q * temps[None, :, None, None]
    u = torch.randn(hkv, d, generator=g)
    u = u / u.norm(dim=-1, keepdim=True)  # one unit direction per KV head
    groups = hq // hkv
    cq = 2.0  # every query gains cq·u; a sink key gains ck·u: logit + cq·ck/√D = SINK_LOGIT
    ck = SINK_LOGIT * math.sqrt(d) / cq
    q = q + cq * u.repeat_interleave(groups, 0)[None, :, None, :]
    sinks = torch.arange(0, lk, SINK_EVERY)
    k[:, :, sinks] += ck * u[None, :, None, :]
    return q, k, v


ENTROPY_ROWS = 256  # query rows per (batch, head) the entropy is averaged over, evenly spaced


def mean_entropy(q: torch.Tensor, k: torch.Tensor, causal: bool) -> float | None:
    """Mean normalised entropy of exact softmax(q·kᵀ/√D) over query rows (rows with fewer than two
    visible keys skipped), in float32, one (batch, head) at a time, on at most ENTROPY_ROWS evenly
    spaced query rows per head (a sample: the mean of a bounded per-row statistic)."""
    b, hq, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    rows_at = torch.linspace(0, lq - 1, min(lq, ENTROPY_ROWS)).round().long().unique()
    q = q[:, :, rows_at]
    total, rows = 0.0, 0
    visible = torch.arange(lk)[None, :] <= (rows_at[:, None] + (lk - lq)) if causal else None
    n_vis = visible.sum(-1) if causal else torch.full((len(rows_at),), lk)
    keep = n_vis >= 2
    if not bool(keep.any()):
        return None
    with torch.no_grad():
        for bi in range(b):
            for h in range(hq):
                s = (q[bi, h].float() @ k[bi, h // (hq // hkv)].float().T) / math.sqrt(d)
                if causal:
                    s = s.masked_fill(~visible, float("-inf"))
                logp = torch.log_softmax(s, dim=-1)
                ent = -(logp.exp() * logp.nan_to_num(0.0, neginf=0.0)).sum(-1)
                total += float((ent[keep] / n_vis[keep].double().log()).sum())
                rows += int(keep.sum())
    return total / rows


def make_inputs(variant, problem: Problem, device: torch.device, seed: int = 0,
                inputs: str = "randn"):
    """(q, k, v) for a case, the variant's (registry.Variant) inputs `inputs` (randn or peaked); with
    randn, a variant's own generator where it has one (reformer's --param inputs=clustered); peaked
    replaces it."""
    if variant.make_inputs is not None and inputs == "randn":
        return variant.make_inputs(problem, device, seed)
    shape_q = (problem.batch, problem.heads, problem.seq_q, problem.head_dim)
    shape_kv = (problem.batch, problem.kv_heads, problem.seq_k, problem.head_dim)
    return tuple(t.to(device=device, dtype=problem.torch_dtype) for t in generate(inputs, shape_q, shape_kv, seed))
