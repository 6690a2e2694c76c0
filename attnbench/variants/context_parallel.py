"""Context parallelism beside the ring: `ulysses` (all-to-all over heads, DeepSpeed-Ulysses,
Jacobs et al. 2023), `hybrid` (Ulysses × ring, as USP and LoongTrain do) and `torch_cp`
(PyTorch's own `torch.distributed.tensor.experimental.context_parallel`, a peer to compare
with). Like `ring` they run only in P processes launched by attnbench.distributed.launch
(`run --world-size N`); the split rules and byte formulas are core/cp.py's.

Parameters: world_size (ranks, default 1: not runnable); hybrid also `ulysses` (the Ulysses
degree, default 2; the ring degree is world_size / ulysses) and `layout` (zig-zag ring shards
when causal). Backends name the local block computation as for ring (`sdpa`, `eager`).

`torch_cp` tried with torch 2.13 on CPU/gloo (2 ranks): causal fails inside torch —
"Operator aten._scaled_dot_product_flash_attention_for_cpu.default does not have a sharding
strategy registered" (with the MATH backend forced: "aten.add.Tensor got mixed torch.Tensor and
DTensor"). Non-causal ran exact once (error 2e-7, identical seeded inputs on both ranks, buffers
sharded head-tail like our zig-zag) but the same call with per-rank inputs hung in its first
SDPA call, so no CPU case is run: both are `unsupported` on CPU with these reasons. On CUDA
(nccl) the rank path (distributed/torch_cp.py) is wired but untested here (no GPU).
"""

from __future__ import annotations

import torch

from attnbench.core.cp import degrees, split_reason
from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Reason, Variant
from attnbench.variants.ring import LAYOUTS, block_available
from attnbench.variants.shared import attention_flops, check_heads, exact_reference, fill_defaults, io_bytes

NOT_HERE = "{name} runs only with --world-size N ≥ 2 (launched by attnbench)"
TORCH_CP_CPU = {
    True: "torch's context_parallel on CPU has no sharding strategy for "
          "aten._scaled_dot_product_flash_attention_for_cpu (causal; tried with torch 2.13, gloo)",
    False: "torch's context_parallel on CPU/gloo hung in its first non-causal SDPA call with per-rank "
           "inputs (torch 2.13); not measured on CPU",
}


def _common(p: Problem, name: str) -> Reason:
    world = p.param("world_size", 1)
    if p.seq_q != p.seq_k:
        return f"{name} splits one sequence: needs seq_q == seq_k (got {p.seq_q} and {p.seq_k})"
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        return f"world_size must be an integer >= 1 (got {world!r})"
    return check_heads(p)


def _supports_for(strategy: str):
    def supports(p: Problem) -> Reason:
        if why := _common(p, strategy):
            return why
        if strategy == "hybrid" and p.param("layout", "zigzag") not in LAYOUTS:
            return f"unknown layout '{p.param('layout')}'; accepted: {', '.join(LAYOUTS)}"
        world, u = p.param("world_size", 1), p.param("ulysses")
        if world == 1:
            return None  # the backend says why it cannot run in one process
        try:
            d = degrees(strategy, world, u)
        except ValueError as e:
            return str(e)
        return split_reason(p.seq_q, p.heads, p.kv_heads, d, p.causal)

    return supports


def _torch_cp_supports(p: Problem) -> Reason:
    if why := _common(p, "torch_cp"):
        return why
    world = p.param("world_size", 1)
    if world > 1 and p.seq_q % (2 * world):
        return f"seq={p.seq_q} must be a multiple of 2 × world_size = {2 * world} (torch shards head-tail)"
    return None


def _backend_supports_for(name: str):
    def supports(p: Problem, device: torch.device) -> Reason:
        if p.param("world_size", 1) < 2:
            return NOT_HERE.format(name=name)
        if name == "torch_cp" and device.type == "cpu":
            return TORCH_CP_CPU[p.causal]
        return None

    return supports


def _build_for(name: str):
    def build(problem: Problem, device: torch.device):
        raise RuntimeError(f"{NOT_HERE.format(name=name)}: the single-process runner cannot build it; use "
                           "attnbench.distributed.launch.run_cp_case")

    return build


def _torch_cp_available(device: torch.device) -> Reason:
    import torch.distributed as dist

    if not dist.is_available():
        return "torch.distributed is not available in this torch build"
    try:
        from torch.distributed.tensor.experimental import context_parallel  # noqa: F401
    except ImportError as e:
        return f"torch.distributed.tensor.experimental.context_parallel cannot be imported: {e}"
    return None


_BLOCKS = {"sdpa": "local blocks by torch's fused kernel returning log-sum-exp",
           "eager": "local blocks by our fp32 softmax with log-sum-exp"}


def _backends(name: str, what: str) -> tuple[Backend, ...]:
    return tuple(Backend(b, _build_for(name), f"{what}; {desc}", why_unavailable=block_available(b),
                         why_unsupported=_backend_supports_for(name)) for b, desc in _BLOCKS.items())


def _variant(name: str, description: str, time: str, memory: str, backends, supports, defaults) -> Variant:
    return Variant(name=name, family="distributed", oracle="softmax", distributed=True, description=description,
                   time=time, memory=memory, reference=exact_reference, flops=attention_flops, bytes=io_bytes,
                   backends=backends, resolve=lambda p: fill_defaults(p, **defaults), why_unsupported=supports,
                   defaults=defaults,
                   modes=("fwd",))


ULYSSES = _variant(
    "ulysses", "exact attention over --world-size ranks: all-to-alls trade sequence shards for head shards "
    "(DeepSpeed-Ulysses); needs heads divisible by the ranks", "O(L²/P) per rank", "O(L/P) in, O(L·H/P) inside",
    _backends("ulysses", "4 all-to-alls over gloo/nccl"), _supports_for("ulysses"), {"world_size": 1})
HYBRID = _variant(
    "hybrid", "exact attention, Ulysses (--param ulysses=U) inside groups × ring across them (USP); "
    "zig-zag ring shards when causal", "O(L²/P) per rank", "O(L/P)",
    _backends("hybrid", "all-to-alls in groups of U, ring of P/U"), _supports_for("hybrid"),
    {"world_size": 1, "ulysses": 2, "layout": "zigzag"})
TORCH_CP = _variant(
    "torch_cp", "PyTorch's own context parallel (torch.distributed.tensor.experimental.context_parallel "
    "around F.scaled_dot_product_attention), as a peer", "O(L²/P) per rank", "O(L/P)",
    (Backend("torch", _build_for("torch_cp"), "torch's context_parallel (ring inside torch, all-gather rotation)",
             why_unavailable=_torch_cp_available, why_unsupported=_backend_supports_for("torch_cp")),),
    _torch_cp_supports, {"world_size": 1})

VARIANTS = (ULYSSES, HYBRID, TORCH_CP)
