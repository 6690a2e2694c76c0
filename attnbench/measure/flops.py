"""FLOP and byte conventions per mode (the variant models give the forward numbers).

Backward = 2.5× forward FLOPs (2× for dQ, dK, dV plus 0.5× recomputing P, as the Triton
fused-attention tutorial and tritonbench count); fwd+bwd = 3.5×; decode is a forward with Lq=1.
Bytes: backward reads q, k, v, out, dout and writes dq, dk, dv: counted as 2× the forward
bytes; fwd+bwd 3×. Achieved rates divide these by the median latency.
"""

from __future__ import annotations

FLOP_FACTOR = {"fwd": 1.0, "decode": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
BYTE_FACTOR = {"fwd": 1.0, "decode": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}


def mode_flops(forward_flops: float, mode: str) -> float:
    return forward_flops * FLOP_FACTOR[mode]


def mode_bytes(forward_bytes: float, mode: str) -> float:
    return forward_bytes * BYTE_FACTOR[mode]


def rate(amount: float, latency_ms: float, unit: float) -> float | None:
    """amount per second in `unit`s (1e12 for TFLOP/s, 1e9 for GB/s)."""
    return amount / (latency_ms * 1e-3) / unit if latency_ms and latency_ms > 0 else None
