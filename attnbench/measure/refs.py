"""In-run references: what this device achieves right now on a large GEMM and a large copy.

Measured once per run and stored in the results header, so every record can report its
fraction of the achievable roofline, and a regression gate can normalise by them.
"""

from __future__ import annotations

import torch

from attnbench.measure.timing import TimingPolicy, time_call

_POLICY = TimingPolicy(min_samples=5, min_time=0.2, max_time=1.0, warmup_time=0.05)


def gemm_flops(device: torch.device, dtype: str = "float32", n: int | None = None) -> dict:
    """Achieved FLOP/s of an n×n @ n×n matmul (2n³ FLOPs)."""
    n = n or (4096 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    t = time_call(lambda: a @ b, device, _POLICY)
    ms = t.stats.median
    return {"n": n, "dtype": dtype, "median_ms": ms, "flops_per_s": 2 * n**3 / (ms * 1e-3)}


def copy_bandwidth(device: torch.device, nbytes: int | None = None) -> dict:
    """Achieved bytes/s of a device-to-device copy (read + write counted)."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 256 << 20)
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), device, _POLICY)
    ms = t.stats.median
    return {"bytes": nbytes, "median_ms": ms, "bytes_per_s": 2 * nbytes / (ms * 1e-3)}


def measure(device: torch.device, dtypes: tuple[str, ...] = ("float32",)) -> dict:
    return {"gemm": {d: gemm_flops(device, d) for d in dtypes}, "copy": copy_bandwidth(device)}
