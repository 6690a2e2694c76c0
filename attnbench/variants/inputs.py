"""The inputs a case is measured on: the variant's own generator when it has one (Reformer needs
shared query/key vectors), else seeded standard-normal q, k, v of the problem's shapes, made on the
CPU generator so every device and run sees the same numbers.
"""

from __future__ import annotations

import torch

from attnbench.core.problem import Problem
from attnbench.variants.base import Variant


def make_inputs(variant: Variant, problem: Problem, device: torch.device, seed: int = 0):
    if variant.make_inputs is not None:
        return variant.make_inputs(problem, device, seed)
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape_q = (problem.batch, problem.heads, problem.seq_q, problem.head_dim)
    shape_kv = (problem.batch, problem.kv_heads, problem.seq_k, problem.head_dim)
    q, k, v = (torch.randn(s, generator=g).to(device=device, dtype=problem.torch_dtype)
               for s in (shape_q, shape_kv, shape_kv))
    return q, k, v
