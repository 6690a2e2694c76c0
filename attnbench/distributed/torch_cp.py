"""PyTorch's own context parallelism as a peer: `torch.distributed.tensor.experimental.
context_parallel` around `F.scaled_dot_product_attention`, on one rank of a measured case.

torch shards the buffers in place when the context is entered (with its default load
balancing: 2·P chunks, rank r holding chunks r and 2P−1−r — the positions of our zig-zag layout)
and runs its own ring inside SDPA (K/V rotated by all-gather by default). The context is entered
once, outside the timed calls, as a model would hold it around a forward pass.

Honest limits: torch's communication happens inside the SDPA call, so no compute/communication
split and no byte count are recorded (null, with the reason). Measured with torch 2.13 on
CPU/gloo: non-causal runs and is exact; causal fails inside torch (no sharding strategy for
the CPU flash op; variants/context_parallel.py declares it unsupported with that reason).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

import torch

from attnbench.core.cp import Degrees
from attnbench.distributed.hybrid import Placement, make_placement

NO_SPLIT = "inside torch's SDPA: compute and communication are not separable from outside"


def torch_cp_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, world: int,
                  device: torch.device, stack: ExitStack) -> tuple[Callable[[], torch.Tensor], Placement]:
    """Enter torch's context (sharding q, k, v: full (B, H, L, D) tensors, in place) on `stack`;
    the call to time and the placement of the output shard."""
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel

    mesh = init_device_mesh(device.type, (world,))
    stack.enter_context(context_parallel(mesh, buffers=[q, k, v], buffer_seq_dims=[2, 2, 2]))
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}

    def call() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa)

    return call, make_placement(q.shape[2], True, Degrees(1, world), "zigzag")  # torch's head-tail shards
