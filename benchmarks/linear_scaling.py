"""Performer scaling on the CPU: our `chunked` backend against performer-pytorch, and the fitted
growth exponents of our latency and peak memory.

    python benchmarks/linear_scaling.py [--threads 2] [--max-peer 16384] [--max-ours 65536]

Problem: B=1, H=8, D=64, nb_features=256, fp32 (the attnbench registry builds both backends
from the same random features). Part 1 times causal and non-causal at 1k..16k and prints
peer/ours ratios. Part 2 times our chunked backend (causal) at 4k..64k, measures its peak memory
(the VmHWM rise of one call, attnbench.measure.memory.peak_cpu) and fits log-log slopes.
Targets: causal ratio at 16k >= 10; latency exponent <= 1.15; memory exponent <= 1.1.
Timing: the best of a few calls after one warmup call (one call only when a call exceeds 3 s:
performer-pytorch's causal path takes about a minute at 16k). Total runtime about 3-5 min.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import attnbench.variants.backends.peers  # noqa: F401  (registers peer:performer-pytorch; imports linear)
from attnbench.core.problem import Problem
from attnbench.measure.memory import peak_cpu
from attnbench.variants import registry

CPU = torch.device("cpu")


def build(backend: str, length: int, causal: bool):
    var = registry.get("performer")
    p = var.resolve(Problem(batch=1, heads=8, kv_heads=8, seq_q=length, seq_k=length, head_dim=64,
                            causal=causal).with_params(**{**var.defaults, "nb_features": 256}))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, length, 64, generator=g) for _ in range(3))
    fn = var.backend(backend).build(p, CPU)
    return lambda: fn(q, k, v)


def best_time(call, budget_s: float = 1.0, max_calls: int = 5) -> float:
    """Seconds: warmup call, then the best of up to max_calls within budget_s."""
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    if first > 3.0:
        return first
    best, spent = math.inf, 0.0
    for _ in range(max_calls):
        t0 = time.perf_counter()
        call()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return best


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def versus_peer(max_len: int) -> dict:
    print("\nperformer, B=1 H=8 D=64 m=256 fp32: chunked vs peer:performer-pytorch (ms)")
    print(f"{'causal':>6} {'L':>6} {'ours':>10} {'peer':>10} {'peer/ours':>10}")
    ratios = {}
    for causal in (True, False):
        length = 1024
        while length <= max_len:
            with torch.no_grad():
                ours = best_time(build("chunked", length, causal))
                peer = best_time(build("peer:performer-pytorch", length, causal))
            ratios[(causal, length)] = peer / ours
            print(f"{str(causal):>6} {length:>6} {ours * 1e3:>10.1f} {peer * 1e3:>10.1f} {peer / ours:>10.1f}")
            length *= 2
    return ratios


def our_scaling(max_len: int, time_cap_s: float = 20.0) -> tuple[float, float]:
    print("\nperformer chunked, causal: latency and peak memory (VmHWM rise of one call)")
    print(f"{'L':>6} {'ms':>10} {'MiB':>10}")
    lengths, times, mems = [], [], []
    length = 4096
    while length <= max_len:
        with torch.no_grad():
            call = build("chunked", length, True)
            t = best_time(call)
            peak = peak_cpu(call)
        lengths.append(length)
        times.append(t)
        mems.append(peak.bytes)
        print(f"{length:>6} {t * 1e3:>10.1f} {peak.bytes / 2**20:>10.1f}")
        if t > time_cap_s:  # the next length would take too long
            break
        length *= 2
    return slope(lengths, times), slope(lengths, mems)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-peer", type=int, default=16384)
    ap.add_argument("--max-ours", type=int, default=65536)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    ratios = versus_peer(args.max_peer)
    lat_exp, mem_exp = our_scaling(args.max_ours)
    ratio16 = ratios.get((True, 16384))
    print(f"\nfitted exponents over 4k..{args.max_ours // 1024}k: latency {lat_exp:.3f} (target <= 1.15), "
          f"memory {mem_exp:.3f} (target <= 1.1)")
    if ratio16 is not None:
        print(f"causal 16k: performer-pytorch / chunked = {ratio16:.1f}x (target >= 10)")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
