"""Clocks during the timed loop: a background thread reads NVML's SM and memory clocks, power and
clock-event (throttle) reasons every `period_s` while the samples are timed; each timing sample
is then flagged throttled when a power or thermal reason was set during it (or in the reading in
force when it began). Flagged samples are left out of the median by default (nvbench discards
throttled samples too); `run --keep-throttled` keeps them. The raw samples stay in the record.

Honest limits: NVML refreshes these values on its own schedule (tens of ms), so a throttle
episode shorter than that can be missed, and a sample next to one can be flagged though it ran
at full clock. The thread costs a few NVML calls per period (each well under a millisecond) and
holds the GIL briefly; on the CPU (no NVML) no thread runs.
"""

from __future__ import annotations

import bisect
import statistics
import threading
import time
from dataclasses import dataclass

from attnbench.measure.telemetry import THROTTLE_BITS, Nvml, is_throttled

PERIOD_S = 0.005


@dataclass(frozen=True)
class Reading:
    t: float  # time.perf_counter() when read
    sm_mhz: int | None
    mem_mhz: int | None
    power_w: float | None
    reasons: int | None


class Sampler:
    """`with Sampler(nvml) as s:` reads the clocks every period_s in a thread; `s.readings` after."""

    def __init__(self, nvml: Nvml, period_s: float = PERIOD_S):
        self.nvml, self.period_s = nvml, period_s
        self.readings: list[Reading] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> None:
        t = time.perf_counter()
        self.readings.append(Reading(t, *self.nvml.clocks()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.period_s)

    def __enter__(self) -> "Sampler":
        if self.nvml.ok:
            self._read()  # the state in force when the loop starts
            self._thread = threading.Thread(target=self._loop, name="attnbench-clocks", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._read()


def flag_samples(spans: tuple[tuple[float, float], ...], readings: list[Reading]) -> list[bool | None]:
    """Per timing sample (t_start, t_end): True when a reading during it, or the last one before it
    began, shows a throttle reason; None when no reading covers it."""
    times = [r.t for r in readings]
    out: list[bool | None] = []
    for t0, t1 in spans:
        lo = max(0, bisect.bisect_right(times, t0) - 1)
        hi = bisect.bisect_right(times, t1)
        states = [is_throttled(r.reasons) for r in readings[lo:hi] if r.t <= t1]
        known = [s for s in states if s is not None]
        out.append(any(known) if known else None)
    return out


def _range(values: list) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}


def reason_names(bits: int) -> list[str]:
    return [name for name, bit in THROTTLE_BITS.items() if bits & bit]


def summary(nvml: Nvml, readings: list[Reading], flags: list[bool | None], excluded: int, keep: bool,
            period_s: float = PERIOD_S) -> dict:
    """The record's `clocks`."""
    if not nvml.ok:
        return {"available": False, "reason": nvml.reason}
    seen = 0
    for r in readings:
        seen |= r.reasons or 0
    throttled_idx = [i for i, f in enumerate(flags) if f]
    return {
        "available": True, "period_s": period_s, "readings": len(readings),
        "sm_clock_mhz": _range([r.sm_mhz for r in readings]),
        "mem_clock_mhz": _range([r.mem_mhz for r in readings]),
        "power_w": _range([r.power_w for r in readings]),
        "throttle_reasons": reason_names(seen),
        "throttled_samples": throttled_idx,
        "unknown_samples": sum(f is None for f in flags),
        "excluded": excluded, "excluded_frac": excluded / len(flags) if flags else 0.0,
        "keep_throttled": keep,
        "note": ("every sample was throttled: none excluded" if throttled_idx and not excluded and not keep else None),
    }


def kept_samples(samples: tuple[float, ...], flags: list[bool | None], keep: bool) -> list[float]:
    """The samples the statistics use: the unthrottled ones (all of them with keep, or when every
    sample was throttled, so a median still exists: the summary's note says so)."""
    kept = [s for s, f in zip(samples, flags) if not f]
    return list(samples) if keep or not kept else kept
