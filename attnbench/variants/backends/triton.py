"""Backend `triton`: attnbench's own Triton kernels (attnbench.kernels); the family files list
these factories among their variants' backends.

    exact variants   flash_attention(softcap=c) (decode mode: flash_decode, split-KV, no softcap)
    sliding_window   flash_attention(window=w, sinks=N, sink_logits=σ, softcap=c)
                                                         the band is skipped tile by tile
    alibi            flash_attention(alibi_slopes=...)   the bias is computed in the kernel
    longformer, bigbird, strided
                     block_sparse_attention over the variant's block layout (index built in setup)

The kernels run on NVIDIA GPUs. On a machine without one the backend is `unavailable` in `run`
(interpreted timings would be meaningless); `attnbench check` runs the same builds under
TRITON_INTERPRET=1 to prove them correct on CPU tensors.
"""

from __future__ import annotations

from typing import Callable

import torch

from attnbench.core.problem import Problem
from attnbench.variants.base import Backend, Fn, Reason

MAX_HEAD_DIM = 256


def _available(device: torch.device) -> Reason:
    from attnbench.kernels import triton_unavailable_reason

    if device.type != "cuda":
        return "no CUDA device (the Triton kernels run on NVIDIA GPUs; `attnbench check` runs them interpreted)"
    return triton_unavailable_reason()


def _supports(problem: Problem, device: torch.device) -> Reason:
    if problem.head_dim > MAX_HEAD_DIM:
        return f"the Triton kernels support head_dim <= {MAX_HEAD_DIM} (got {problem.head_dim})"
    return None


def _decode_ok(problem: Problem) -> bool:
    return problem.mode == "decode" and problem.seq_q <= 16


def _softcap(problem: Problem) -> float:
    return float(problem.param("softcap") or 0.0)


def _flash_build(problem: Problem, device: torch.device) -> Fn:
    from attnbench.kernels import flash_attention, flash_decode

    if _decode_ok(problem):
        def triton_decode(q, k, v):
            return flash_decode(q, k, v, causal=problem.causal)

        return triton_decode
    cap = _softcap(problem)

    def triton_flash(q, k, v):
        return flash_attention(q, k, v, causal=problem.causal, softcap=cap)

    return triton_flash


def _flash_supports(problem: Problem, device: torch.device) -> Reason:
    if _decode_ok(problem) and _softcap(problem):
        return ("the Triton split-KV decode kernel has no logit soft-cap; use eager, grouped or flex "
                "(or the flash kernel in fwd mode)")
    return _supports(problem, device)


def _window_build(problem: Problem, device: torch.device) -> Fn:
    from attnbench.kernels import flash_attention
    from attnbench.variants.modifiers import sink_logits_of

    window, cap, sinks = problem.param("window"), _softcap(problem), problem.param("sinks", 0)
    sink = sink_logits_of(problem, device)

    def triton_window(q, k, v):
        return flash_attention(q, k, v, causal=problem.causal, window=window, softcap=cap, sinks=sinks,
                               sink_logits=sink)

    return triton_window


def _alibi_build(slopes_of: Callable[[int], torch.Tensor]):
    def build(problem: Problem, device: torch.device) -> Fn:
        from attnbench.kernels import flash_attention

        slopes = slopes_of(problem.heads).to(device=device, dtype=torch.float32)

        def triton_alibi(q, k, v):
            return flash_attention(q, k, v, causal=problem.causal, alibi_slopes=slopes)

        return triton_alibi

    return build


def _block_sparse_build(layout: Callable[[Problem], torch.Tensor]):
    def build(problem: Problem, device: torch.device) -> Fn:
        from attnbench.kernels import block_sparse_attention, build_block_index

        block = problem.param("block")
        index = build_block_index(layout(problem), block=block, device=device)

        def triton_block_sparse(q, k, v):
            return block_sparse_attention(q, k, v, index, causal=problem.causal)

        return triton_block_sparse

    return build


def _block_supports(problem: Problem, device: torch.device) -> Reason:
    from attnbench.kernels.block_sparse import BLOCKS

    if problem.param("block") not in BLOCKS:
        return f"the Triton block-sparse kernel takes block in {BLOCKS} (got {problem.param('block')})"
    return _supports(problem, device)


def _backend(build, description: str, why_unsupported=_supports, memory: str | None = None) -> Backend:
    """memory: the kernel's own claim where it changes the variant's (online softmax: O(L))."""
    return Backend("triton", build, description + " (fp32: TF32 dots)", why_unavailable=_available,
                   why_unsupported=why_unsupported, tf32_dots=True, memory=memory)


def flash_backend() -> Backend:
    """For the exact family and flash: FlashAttention-2 forward/backward, split-KV in decode."""
    return _backend(_flash_build, "attnbench's Triton FlashAttention-2 (split-KV in decode)", _flash_supports,
                    memory="O(L)")


def window_backend() -> Backend:
    return _backend(_window_build, "Triton FlashAttention with the window (and sinks, softcap) in the kernel")


def alibi_backend(slopes_of: Callable[[int], torch.Tensor]) -> Backend:
    """slopes_of(heads) -> (H,) ALiBi slopes, the variant's own."""
    return _backend(_alibi_build(slopes_of), "Triton FlashAttention with ALiBi in the kernel", memory="O(L)")


def block_sparse_backend(layout: Callable[[Problem], torch.Tensor]) -> Backend:
    """layout(problem) -> the variant's (blocks_q, blocks_k) block layout."""
    return _backend(_block_sparse_build(layout), "Triton block-sparse attention over the layout", _block_supports)
