"""CUDA-graph timing (`run --cuda-graph`): N calls of the built function captured in one CUDA graph,
the replays timed with CUDA events (L2 flushed outside the events, as in measure/timing.py), each
sample = one replay's time / N. Launch overhead, which eager timing of a microsecond decode call
mostly measures, is then paid once per replay.

Before a figure is used, the profiler checks that a replay runs the same kernels as eager calls:
the GPU kernels of one eager call (counted under torch.profiler) must equal those of one replay
divided by N. A mismatch (a kernel left out of the capture, a CPU fallback, a host sync) means
the graph does not time what eager runs: the record falls back to per-call events and
`timing.cuda_graph` says so with both counts.

Honest limits: the L2 is flushed before each replay, not between the N calls inside it: the first
call of a replay starts cold, the other N − 1 read inputs the previous call left in the cache
(so graph figures of small decode problems are warm-cache figures; `timing.cuda_graph` says
1 cold call of N). Forward and decode only (a backward through autograd is not captured here);
captured calls reuse the same input and output buffers, so any caching of outputs across calls
inside the backend would be timed too; a backend that cannot be captured (host synchronisation,
dynamic shapes, torch.compile without its graph-safe mode) is recorded with the capture error.
On a CPU there is nothing to capture: `unavailable` with the reason.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from attnbench.measure.timing import Timing, TimingPolicy, l2_flush_bytes, stop_reason

CALLS_PER_GRAPH = 10


def unavailable_reason(device: torch.device, mode: str) -> str | None:
    """Why this case cannot be timed under a CUDA graph, None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; this run is on {device.type} (timed with {device.type}-block)"
    if mode not in ("fwd", "decode"):
        return f"mode {mode} runs autograd, which this harness does not capture (fwd and decode only)"
    return None


def count_kernels(fn: Callable[[], object]) -> int:
    """GPU kernels launched by fn() under the profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)


def capture(fn: Callable[[], object], calls: int) -> "torch.cuda.CUDAGraph":
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    torch.cuda.synchronize()
    return graph


def time_graph(fn: Callable[[], object], policy: TimingPolicy, calls: int = CALLS_PER_GRAPH
               ) -> tuple[Timing | None, dict]:
    """(Timing of replays, the record's timing.cuda_graph); Timing is None when the capture failed
    or the replay's kernels differ from eager's (the caller times per-call events then)."""
    try:
        t0 = time.perf_counter()
        graph = capture(fn, calls)
        capture_ms = (time.perf_counter() - t0) * 1e3
    except Exception as e:  # a backend that cannot be captured: recorded with its error
        why = " ".join(str(e).split())[:200]
        return None, {"status": "failed", "reason": f"capture failed: {type(e).__name__}: {why}; timed with events"}
    eager = count_kernels(fn)
    replay = count_kernels(graph.replay)
    info = {"calls_per_graph": calls, "cold_calls_per_replay": 1, "capture_ms": capture_ms,
            "kernels_per_eager_call": eager, "kernels_per_replay": replay}
    if replay != eager * calls:
        return None, {**info, "status": "rejected",
                      "reason": f"a replay ran {replay} kernels, {calls} eager calls run {eager * calls}: the "
                                "graph does not time what eager runs; timed with per-call events"}
    nbytes = policy.l2_flush_bytes or l2_flush_bytes(torch.device("cuda", torch.cuda.current_device()))
    flush = torch.empty(nbytes // 4, dtype=torch.int32, device="cuda")
    samples, spans, spent = [], [], 0.0
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        flush.zero_()
        h0 = time.perf_counter()
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
        samples.append(ms / calls)
        spans.append((h0, time.perf_counter()))
        spent += ms / 1e3
        if why := stop_reason(samples, spent, policy):
            timing = Timing(tuple(samples), calls, capture_ms, why, tuple(spans), "cuda-graph", nbytes)
            return timing, {**info, "status": "ok", "reason": None}
