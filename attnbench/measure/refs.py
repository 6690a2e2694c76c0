"""In-run references: what this device achieves right now on a large GEMM and on copies that fit
each level of the memory hierarchy, and the roof each case is held to.

Measured once per run and stored in the results header, so every record can report its
fraction of the achievable roofline, and a regression gate can normalise by them.

- GEMM: n×n @ n×n, n = 4096 on a GPU, 1024 on the CPU (the largest whose BEST_OF calls fit about
  a second on a loaded 2-core CPU; 2048 reaches within ~10 % of its rate), best of at least
  BEST_OF single calls (the rate the device can reach: on a shared CPU most calls wait for a
  descheduled thread, and such samples must not lower the roof), with the median and the spread
  (p90 − p10)/median of the samples in the header.
- Copy bandwidth (read + write counted) at several buffer sizes: 256 KiB, 2 MiB, 8 MiB, 32 MiB
  (cache sizes) and DRAM size (64 MiB on the CPU: twice the L3 of this machine; 1 GiB on a GPU), each best of
  at least BEST_OF
  single calls (more, up to MIN_TIME_S, for the small ones).
- On the CPU each reference is measured with torch's thread count and with one thread, and the
  faster is kept (`threads` says which): on a loaded machine a multi-threaded copy of 256 KiB
  waits for descheduled threads (12 ms instead of 14 µs measured here), which is the load, not
  the roof.
- L2 (`l2`, GPU only): the flush buffer's size and whether the flush leaves the cache cold
  (measure/l2.py: a cache-resident read timed before and after a flush), once per run.
- A case's roof (`roof`): min(GEMM best, intensity × the copy bandwidth of the smallest level whose
  copy working set (2 × buffer) holds the case's bytes). `roofline_frac` above ROOF_SLACK gets the
  `above_roof` flag and a reason: the models (FLOPs counted, minimum bytes) or the references are
  then wrong for that case, and the fraction must not be read as efficiency.
"""

from __future__ import annotations

import math
import time

import torch

from attnbench.core.results import ROOF_SLACK
from attnbench.measure import l2
from attnbench.measure.timing import TimingPolicy, time_call

BEST_OF = 10
MIN_TIME_S = 0.1  # CPU: single calls go on until this long (and BEST_OF calls) have run
COPY_LEVELS = (256 << 10, 2 << 20, 8 << 20, 32 << 20)  # bytes per buffer; DRAM size added per device
_POLICY = TimingPolicy(min_samples=BEST_OF, max_samples=BEST_OF, min_time=0.0, max_time=10.0, warmup_time=0.02)


def _best_over_threads(measure_one, device: torch.device, rate_key: str) -> dict:
    """measure_one() with torch's threads and (CPU, more than one thread) with one; the faster."""
    results = [{**measure_one(), "threads": torch.get_num_threads()}]
    if device.type == "cpu" and torch.get_num_threads() > 1:
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results.append({**measure_one(), "threads": 1})
        finally:
            torch.set_num_threads(saved)
    return max(results, key=lambda r: r[rate_key])


def _samples_ms(fn, device: torch.device) -> list[float]:
    """Per-call times: CUDA events on a GPU (timing.time_call); single perf_counter calls on the
    CPU, at least BEST_OF and until MIN_TIME_S, after two warm-up calls."""
    if device.type == "cuda":
        return list(time_call(fn, device, _POLICY).samples_ms)
    fn()
    fn()
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < BEST_OF or (time.perf_counter() - start < MIN_TIME_S and len(out) < 10_000):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def _summary(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    med = s[len(s) // 2]
    p10, p90 = s[int(0.1 * (len(s) - 1))], s[int(math.ceil(0.9 * (len(s) - 1)))]
    return {"best_ms": s[0], "median_ms": med, "spread": (p90 - p10) / med if med else None, "samples": len(s)}


def gemm_flops(device: torch.device, dtype: str = "float32", n: int | None = None) -> dict:
    """Best achieved FLOP/s of an n×n @ n×n matmul (2n³ FLOPs) over BEST_OF samples."""
    n = n or (4096 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    s = _summary(_samples_ms(lambda: a @ b, device))
    return {
        "n": n,
        "dtype": dtype,
        **s,
        "flops_per_s": 2 * n**3 / (s["best_ms"] * 1e-3),
        "median_flops_per_s": 2 * n**3 / (s["median_ms"] * 1e-3),
    }


def copy_bandwidth(device: torch.device, nbytes: int) -> dict:
    """Best achieved bytes/s of a device-to-device copy of nbytes (read + write counted)."""
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    s = _summary(_samples_ms(lambda: dst.copy_(src), device))
    return {"bytes": nbytes, **s, "bytes_per_s": 2 * nbytes / (s["best_ms"] * 1e-3)}


def measure(device: torch.device, dtypes: tuple[str, ...] = ("float32",)) -> dict:
    """The header's refs: gemm per dtype; copy = the DRAM-size level (bytes_per_s) plus `levels`;
    l2 = the flush size and whether it leaves the L2 cold (measure/l2.py; unavailable on a CPU)."""
    dram = 1 << 30 if device.type == "cuda" else 64 << 20
    levels = [
        _best_over_threads(lambda n=n: copy_bandwidth(device, n), device, "bytes_per_s") for n in (*COPY_LEVELS, dram)
    ]
    gemm = {d: _best_over_threads(lambda d=d: gemm_flops(device, d), device, "flops_per_s") for d in dtypes}
    return {"gemm": gemm, "copy": {**levels[-1], "levels": levels}, "l2": l2.check(device)}


def roof(flops: float, nbytes: float, working_set: float, dtype: str, refs: dict | None) -> dict | None:
    """The roof a case is held to: {"flops_per_s", "bound" (compute | memory), "bytes_per_s",
    "level_bytes"} or None without references or a byte model."""
    if not refs or nbytes <= 0:
        return None
    gemm = (refs.get("gemm") or {}).get(dtype) or (refs.get("gemm") or {}).get("float32")
    copy = refs.get("copy") or {}
    levels = copy.get("levels") or ([copy] if copy.get("bytes_per_s") else [])
    if not gemm or not levels:
        return None
    fits = [lv for lv in levels if 2 * lv["bytes"] >= working_set]
    level = min(fits, key=lambda lv: lv["bytes"]) if fits else max(levels, key=lambda lv: lv["bytes"])
    mem_roof = flops / nbytes * level["bytes_per_s"]
    bound = "compute" if gemm["flops_per_s"] <= mem_roof else "memory"
    return {
        "flops_per_s": min(gemm["flops_per_s"], mem_roof),
        "bound": bound,
        "bytes_per_s": level["bytes_per_s"],
        "level_bytes": level["bytes"],
        "working_set_bytes": working_set,
    }


def above_roof_reason(frac: float | None, r: dict | None, dtype: str, refs: dict | None) -> str | None:
    """Why roofline_frac exceeds ROOF_SLACK (None when it does not)."""
    if frac is None or r is None or frac <= ROOF_SLACK:
        return None
    if r["bound"] == "compute":
        g = ((refs or {}).get("gemm") or {}).get(dtype) or ((refs or {}).get("gemm") or {}).get("float32") or {}
        return (
            f"{frac:.2f}× the in-run GEMM best ({g.get('n')}²: {r['flops_per_s'] / 1e9:.3g} GFLOP/s): the FLOP "
            f"model counts more than the kernel computes, or the machine was faster than during the reference"
        )
    return (
        f"{frac:.2f}× the memory roof (copy bandwidth {r['bytes_per_s'] / 1e9:.3g} GB/s at a {r['level_bytes'] >> 10} "
        f"KiB buffer, working set {r['working_set_bytes'] / 2**20:.2g} MiB): data reused from a faster level "
        f"than the copy measured, or fewer bytes moved than the model's minimum"
    )
