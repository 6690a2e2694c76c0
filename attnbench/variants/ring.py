"""The `ring` variant: exact attention computed by P ranks, the sequence split across them
(Ring Attention, Liu et al. 2023; see ring.py). Registered like every family, but it runs in
P processes launched by attnbench.distributed.launch, never inside the single-process runner
(run/plan.py: is_distributed, with_world_size).

Parameters: world_size (ranks, default 1: not runnable), layout ("zigzag" for causal load
balance, or "contiguous"). Backends name the local block computation: `sdpa` (torch's fused
kernel with log-sum-exp), `eager` (our fp32 block), `triton` (attnbench.kernels, when it exposes
the log-sum-exp). FLOPs are those of the whole problem (summed over ranks); per-rank FLOPs,
bytes sent and the compute/communication split are in the record's `distributed` field.
"""

from __future__ import annotations

import torch

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason, Variant
from attnbench.variants.shared import attention_flops, check_heads, exact_reference, fill_defaults, io_bytes

LAYOUTS = ("zigzag", "contiguous")  # how the sequence is split across ranks (distributed/layout.py)
NOT_HERE = "ring runs only with --world-size N ≥ 2 (launched by attnbench)"


def _resolve(p: Problem) -> Problem:
    return fill_defaults(p, world_size=1, layout="zigzag")


def _supports(p: Problem) -> Reason:
    world, layout = p.param("world_size", 1), p.param("layout", "zigzag")
    if p.seq_q != p.seq_k:
        return f"ring splits one sequence: needs seq_q == seq_k (got {p.seq_q} and {p.seq_k})"
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        return f"world_size must be an integer >= 1 (got {world!r})"
    if layout not in LAYOUTS:
        return f"unknown layout '{layout}'; accepted: {', '.join(LAYOUTS)}"
    if p.seq_q < 2 * world:
        return f"seq={p.seq_q} is too short for {world} ranks (needs at least {2 * world})"
    return check_heads(p)


def _backend_supports(p: Problem, device: torch.device) -> Reason:
    return NOT_HERE if p.param("world_size", 1) < 2 else None


def block_available(block: str):
    def why_unavailable(device: torch.device) -> Reason:
        import torch.distributed as dist

        if not dist.is_available():
            return "torch.distributed is not available in this torch build"
        return _triton_unavailable() if block == "triton" else None

    return why_unavailable


def _triton_unavailable() -> Reason:
    from attnbench import kernels

    if why := kernels.triton_unavailable_reason():
        return why
    if not hasattr(kernels, "flash_attention_lse"):
        return ("attnbench.kernels has no flash_attention_lse(q, k, v, causal, scale) -> (out, lse) yet; "
                "the ring needs each block's log-sum-exp")
    return None


def _build(problem: Problem, device: torch.device) -> Fn:
    raise RuntimeError(f"{NOT_HERE}: the single-process runner cannot build it; use "
                       "attnbench.distributed.launch.run_ring_case")


_DESCRIPTIONS = {
    "sdpa": "ring over gloo/nccl; local blocks by torch's fused kernel returning log-sum-exp",
    "eager": "ring over gloo/nccl; local blocks by our fp32 softmax with log-sum-exp",
    "triton": "ring over nccl; local blocks by attnbench.kernels (needs flash_attention_lse)",
}

RING = Variant(
    name="ring", family="distributed", oracle="softmax", distributed=True,
    description="exact attention, sequence split over --world-size ranks, K/V passed around a ring "
                "(zig-zag shards when causal)",
    time="O(L²/P) per rank", memory="O(L/P)", reference=exact_reference, flops=attention_flops,
    bytes=io_bytes,
    backends=tuple(Backend(name, _build, desc, why_unavailable=block_available(name),
                           why_unsupported=_backend_supports)
                   for name, desc in _DESCRIPTIONS.items()),
    resolve=_resolve, why_unsupported=_supports, defaults={"world_size": 1, "layout": "zigzag"}, modes=("fwd",))

VARIANTS = (RING,)
