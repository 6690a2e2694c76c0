"""Backend `triton`: attnbench's own Triton kernels (attnbench.kernels) behind the registry.

    exact variants   flash_attention (decode mode: flash_decode, split-KV)
    sliding_window   flash_attention(window=w)           the band is skipped tile by tile
    alibi            flash_attention(alibi_slopes=...)   the bias is computed in the kernel
    longformer, bigbird, strided
                     block_sparse_attention over the variant's block layout (index built in setup)

The kernels run on NVIDIA GPUs. On a machine without one the backend is `unavailable` in `run`
(interpreted timings would be meaningless); `attnbench check` runs the same builds under
TRITON_INTERPRET=1 to prove them correct on CPU tensors.
"""

from __future__ import annotations

import torch

from ..problem import Problem
from ..registry import Backend, Fn, Reason, add_backend

MAX_HEAD_DIM = 256


def _available(device: torch.device) -> Reason:
    from ..kernels import triton_unavailable_reason

    if device.type != "cuda":
        return "no CUDA device (the Triton kernels run on NVIDIA GPUs; `attnbench check` runs them interpreted)"
    return triton_unavailable_reason()


def _supports(problem: Problem, device: torch.device) -> Reason:
    if problem.head_dim > MAX_HEAD_DIM:
        return f"the Triton kernels support head_dim <= {MAX_HEAD_DIM} (got {problem.head_dim})"
    return None


def _decode_ok(problem: Problem) -> bool:
    return problem.mode == "decode" and problem.seq_q <= 16


def _flash_build(problem: Problem, device: torch.device) -> Fn:
    from ..kernels import flash_attention, flash_decode

    if _decode_ok(problem):
        def triton_decode(q, k, v):
            return flash_decode(q, k, v, causal=problem.causal)

        return triton_decode

    def triton_flash(q, k, v):
        return flash_attention(q, k, v, causal=problem.causal)

    return triton_flash


def _window_build(problem: Problem, device: torch.device) -> Fn:
    from ..kernels import flash_attention

    window = problem.param("window")

    def triton_window(q, k, v):
        return flash_attention(q, k, v, causal=problem.causal, window=window)

    return triton_window


def _alibi_build(problem: Problem, device: torch.device) -> Fn:
    from ..kernels import flash_attention
    from .positional import alibi_slopes

    slopes = alibi_slopes(problem.heads).to(device=device, dtype=torch.float32)

    def triton_alibi(q, k, v):
        return flash_attention(q, k, v, causal=problem.causal, alibi_slopes=slopes)

    return triton_alibi


def _block_sparse_build(variant: str):
    def build(problem: Problem, device: torch.device) -> Fn:
        from ..kernels import block_sparse_attention, build_block_index
        from .sparse import BLOCK_LAYOUTS

        block = problem.param("block")
        index = build_block_index(BLOCK_LAYOUTS[variant](problem), block=block, device=device)

        def triton_block_sparse(q, k, v):
            return block_sparse_attention(q, k, v, index, causal=problem.causal)

        return triton_block_sparse

    return build


def _block_supports(problem: Problem, device: torch.device) -> Reason:
    from ..kernels.block_sparse import BLOCKS

    if problem.param("block") not in BLOCKS:
        return f"the Triton block-sparse kernel takes block in {BLOCKS} (got {problem.param('block')})"
    return _supports(problem, device)


def _backend(build, description: str, supports=_supports, memory: str | None = None) -> Backend:
    """memory: the kernel's own claim where it changes the variant's (online softmax: O(L))."""
    return Backend("triton", build, description + " (fp32: TF32 dots)", available=_available, supports=supports,
                   tf32_dots=True, memory=memory)


def register_triton_backends() -> None:
    for name in ("mha", "causal", "cross", "mqa", "gqa", "flash"):
        add_backend(name, _backend(_flash_build, "attnbench's Triton FlashAttention-2 (split-KV in decode)",
                                   memory="O(L)"))
    add_backend("sliding_window", _backend(_window_build, "Triton FlashAttention with the window in the kernel"))
    add_backend("alibi", _backend(_alibi_build, "Triton FlashAttention with ALiBi in the kernel", memory="O(L)"))
    for name in ("longformer", "bigbird", "strided"):
        add_backend(name, _backend(_block_sparse_build(name), "Triton block-sparse attention over the layout",
                                   _block_supports))
