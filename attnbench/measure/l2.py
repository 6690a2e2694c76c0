"""Is the L2 really cold after the flush? Checked once per run (in the in-run references): a
buffer of a third of the L2 is read (a sum) once to make it resident, then its read is timed with
CUDA events warm, the flush buffer is zeroed (measure/timing.py: FLUSH_FACTOR × L2), and the read
is timed again; REPEATS pairs. The flush does what it claims when the cold reads are slower than
the warm ones by at least MIN_RATIO (medians) and their interquartile ranges do not overlap:
`verified`. A cold read as fast as a warm one (ratio under MIN_RATIO, ranges overlapping) means
the flush left the data in the cache: `not verified` (GPU figures timed with it are warm-L2
figures). Anything between: `inconclusive`, with the numbers.

Honest limits: one buffer size and one access pattern (a streaming read); an L2 with a
partitioned or compressed layout may keep part of a larger working set. On a CPU there is no
flush between calls at all: `unavailable` with the reason.
"""

from __future__ import annotations

import statistics

import torch

from attnbench.measure.timing import FLUSH_FACTOR, l2_flush_bytes, quantile

REPEATS = 20
MIN_RATIO = 1.2


def _read_ms(buf: torch.Tensor) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    buf.sum()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def verdict(warm: list[float], cold: list[float]) -> tuple[str, float]:
    """(verified | not verified | inconclusive, median cold / median warm)."""
    w, c = sorted(warm), sorted(cold)
    ratio = statistics.median(c) / statistics.median(w)
    apart = quantile(c, 0.25) > quantile(w, 0.75)
    overlap = quantile(c, 0.25) <= quantile(w, 0.75) and quantile(w, 0.25) <= quantile(c, 0.75)
    if ratio >= MIN_RATIO and apart:
        return "verified", ratio
    if ratio < MIN_RATIO and overlap:
        return "not verified", ratio
    return "inconclusive", ratio


def check(device: torch.device) -> dict:
    """The header's refs.l2: the flush size and whether it leaves the L2 cold."""
    if device.type != "cuda":
        return {"status": "unavailable", "flush_bytes": None,
                "reason": f"no L2 flush on a {device.type} run: CPU samples are blocks of back-to-back calls "
                          "(warm caches by design)"}
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
    flush_bytes = l2_flush_bytes(device)
    if l2 <= 0:
        return {"status": "unavailable", "flush_bytes": flush_bytes,
                "reason": "torch reports no L2_cache_size for this device: the flush is the fallback size, unchecked"}
    buf = torch.ones(max(1024, l2 // 3 // 4), dtype=torch.float32, device=device)
    flush = torch.empty(flush_bytes // 4, dtype=torch.int32, device=device)
    warm, cold = [], []
    buf.sum()
    for _ in range(REPEATS):
        buf.sum()
        warm.append(_read_ms(buf))
        flush.zero_()
        cold.append(_read_ms(buf))
    status, ratio = verdict(warm, cold)
    return {"status": status, "l2_bytes": l2, "flush_bytes": flush_bytes, "flush_factor": FLUSH_FACTOR,
            "probe_bytes": buf.numel() * 4, "warm_ms": statistics.median(warm), "cold_ms": statistics.median(cold),
            "ratio": ratio, "repeats": REPEATS, "min_ratio": MIN_RATIO, "reason": None}
