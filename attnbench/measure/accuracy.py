"""Error of an output against a reference, both compared in float64."""

from __future__ import annotations

import torch

# The dense fp64 oracle is computed only up to this many score elements (B·Hq·Lq·Lk:
# 1 GiB per fp64 score tensor); beyond it `error` holds the reason instead.
REFERENCE_LIMIT = 2**27


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """rel_l2 = ‖out − ref‖₂ / ‖ref‖₂ and max_abs = max |out − ref|."""
    o, r = out.detach().double(), ref.detach().double()
    diff = o - r
    denom = r.norm().item()
    return {
        "rel_l2": diff.norm().item() / denom if denom > 0 else diff.norm().item(),
        "max_abs": diff.abs().max().item() if diff.numel() else 0.0,
    }
