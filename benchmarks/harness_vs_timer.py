"""The harness's CPU median next to torch.utils.benchmark.Timer.blocked_autorange on the same
workloads, interleaved (A B A B ...) so machine drift hits both alike. Prints each median and
the ratio harness / Timer; a ratio near 1 says the harness adds nothing to what it times.

    python benchmarks/harness_vs_timer.py
"""

import statistics

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from attnbench.measure.timing import TimingPolicy, time_cpu

ROUNDS = 3


def workloads():
    q = torch.randn(1, 8, 1024, 64)
    k = torch.randn(1, 8, 1024, 64)
    v = torch.randn(1, 8, 1024, 64)
    a = torch.randn(1024, 1024)
    yield "sdpa B1 H8 L1024 D64 fp32", lambda: F.scaled_dot_product_attention(q, k, v), \
        {"F": F, "q": q, "k": k, "v": v}, "F.scaled_dot_product_attention(q, k, v)"
    yield "matmul 1024² fp32", lambda: a @ a, {"a": a}, "a @ a"
    qd = torch.randn(1, 8, 1, 64)
    yield "sdpa decode 1×4k (short call)", lambda: F.scaled_dot_product_attention(qd, k, v), \
        {"F": F, "q": qd, "k": k, "v": v}, "F.scaled_dot_product_attention(q, k, v)"


def main() -> None:
    threads = torch.get_num_threads()
    policy = TimingPolicy(min_samples=10, min_time=0.2, max_time=2.0, target_rel_iqr=0.1)
    print(f"threads={threads}; {ROUNDS} interleaved rounds; medians in ms")
    print(f"{'workload':34} {'harness':>9} {'Timer':>9} {'ratio':>7}")
    for name, fn, globs, stmt in workloads():
        ours, theirs = [], []
        for _ in range(ROUNDS):
            ours.append(time_cpu(fn, policy).stats.median)
            m = Timer(stmt, globals=globs, num_threads=threads).blocked_autorange(min_run_time=0.2)
            theirs.append(m.median * 1e3)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{name:34} {a:9.3f} {b:9.3f} {a / b:7.3f}")


if __name__ == "__main__":
    main()
