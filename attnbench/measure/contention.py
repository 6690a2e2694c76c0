"""Whether a CPU measurement was contended: other work held the cores the run's threads needed.

On a shared CPU a multi-threaded torch call waits at every parallel region for its slowest thread;
when a thread is descheduled the call takes the length of a time slice, not of the work. The
samples then agree with each other (a tight IQR) and are all wrong: a GQA decode step at 1k read
12 ms with IQR 1 % with two threads on a loaded 2-core machine, and 0.107 ms with one thread.
A tight spread therefore cannot clear a measurement; two independent signals can condemn one:

- load: the 1-minute load average (runnable tasks, this run's own threads included) above the
  usable cores + LOAD_SLACK, read when the case ends: some thread was waiting for a core;
- the in-run reference: the run's GEMM reference (measure/refs.py, measured at the start) had a
  median call more than GEMM_WAIT × its best: its calls waited for descheduled threads.

Either one flags the record `contended` (results.FLAGS) with the reason in `timing.contention`.
Honest limits: the load average is a one-minute mean, so a burst shorter than that is diluted and
a burst just before a case lingers; a run on a GPU is not judged (its timing is the device's, the
host's load shows as launch overhead only). The functions take the load, cores and threads as
arguments so tests need not depend on the machine's real load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

LOAD_SLACK = 0.5  # runnable tasks beyond the cores before a case counts as contended
GEMM_WAIT = 1.5  # in-run GEMM median ÷ best above this: the reference's own calls waited


@dataclass(frozen=True)
class Contention:
    contended: bool
    why: str | None = None  # the signals that fired, with their figures


def judge(device_type: str, load1: float | None, cores: int, threads: int, gemm: dict | None) -> Contention:
    """The contention of one CPU case from the load average, the usable cores, the run's threads and
    the run's in-run GEMM reference of the case's dtype (refs["gemm"][dtype]; None: not measured)."""
    if device_type != "cpu":
        return Contention(False)
    why = []
    if load1 is not None and load1 > cores + LOAD_SLACK:
        why.append(f"load average {load1:.1f} on {cores} core{'s' if cores != 1 else ''} "
                   f"({threads} thread{'s' if threads != 1 else ''} in this run)")
    best, median = (gemm or {}).get("best_ms"), (gemm or {}).get("median_ms")
    if best and median and median > GEMM_WAIT * best:
        why.append(f"the in-run GEMM reference's median call took {median / best:.1f}× its best")
    return Contention(bool(why), "; ".join(why) or None)


def load_average() -> float | None:
    """The 1-minute load average; None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def advice(records: list[dict]) -> str | None:
    """One line for the end of a run with contended records: how many, why, and how to avoid it."""
    hit = [r for r in records if "contended" in (r.get("flags") or [])]
    if not hit:
        return None
    why = next(((r.get("timing") or {}).get("contention") for r in hit if (r.get("timing") or {}).get("contention")),
               None)
    threads = max((r.get("threads") or 1) for r in hit)
    fix = "rerun with --threads 1 (a descheduled thread stalls every parallel region) on a quiet machine" \
        if threads > 1 else "rerun on a quiet machine (nothing else running)"
    return (f"contended: {len(hit)} of {len(records)} cases ran on a contended CPU"
            + (f" ({why})" if why else "") + f"; their times are not the code's: {fix}.")
