"""attnbench's Triton attention kernels (installed as `attnbench.kernels`).

  flash_attention          FlashAttention-2 forward + backward: causal, sliding window, ALiBi, GQA
  flash_decode             split-KV decoding (Flash-Decoding), forward only
  block_sparse_attention   block-sparse forward + backward over a CSR/CSC block index
  build_block_index        the block index, built once at setup
  mla_decode               absorbed multi-head latent attention (MLA) decode over the latent cache
  paged_decode             split-KV decode of a ragged batch through a paged KV cache's block table
  dsa_decode               DeepSeek sparse attention decode over the top-k selected latent slots

Tensors are (B, H, L, D) like F.scaled_dot_product_attention; causal masks are aligned
bottom-right. Each kernel file's docstring lists what it supports and what it does not;
`configs.py` holds the autotune lists and `aot.py` the no-GPU compile report. Three functions
share their module's name (mla_decode, paged_decode, dsa_decode): the package attribute is the
function; reach a module with `aot.kernel_module(name)` or `importlib.import_module`.

Importing this package never fails: without triton the functions raise, and
`triton_unavailable_reason()` says why they cannot run here.
"""

from __future__ import annotations

import os

try:
    import triton  # noqa: F401
except ImportError:
    _HAVE_TRITON = False
else:
    _HAVE_TRITON = True

__all__ = ["flash_attention", "flash_decode", "block_sparse_attention", "build_block_index", "mla_decode",
           "paged_decode", "dsa_decode", "triton_unavailable_reason"]


def triton_unavailable_reason() -> str | None:
    """Why the kernels cannot run in this process, or None when they can.

    They run on CUDA devices, or on CPU tensors under TRITON_INTERPRET=1 (slow; for tests)."""
    if not _HAVE_TRITON:
        return "triton not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    import torch

    return None if torch.cuda.is_available() else "no CUDA device"


if _HAVE_TRITON:
    from .block_sparse import BlockIndex, block_sparse_attention, build_block_index
    from .decode import flash_decode
    from .dsa_decode import dsa_decode
    from .flash import flash_attention
    from .mla_decode import mla_decode
    from .paged_decode import paged_decode
else:
    def _unavailable(*args, **kwargs):
        raise RuntimeError("attnbench.kernels: triton not installed")

    flash_attention = flash_decode = block_sparse_attention = build_block_index = _unavailable
    mla_decode = paged_decode = dsa_decode = _unavailable
    BlockIndex = None
