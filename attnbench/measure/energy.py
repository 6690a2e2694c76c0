"""Energy per call, from a cumulative energy counter read around a loop of back-to-back calls.

Counters:
- GPU: NVML's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver
  loaded, Volta and later). It counts in 1 mJ but is refreshed only every 20-100 ms, so a loop
  shorter than a few refresh periods reads mostly quantisation: the loop lasts at least
  NVML_UPDATE_S / TARGET_REL (1 s: at most ~10 % error from one missed refresh).
- CPU: RAPL package counters (`/sys/class/powercap/intel-rapl:N/energy_uj`, µJ, wrapping at
  `max_energy_range_uj`, a few minutes of full load: one wrap within a loop is undone, the loop is
  far shorter than two); every top-level package domain is summed (sub-zones such as core and
  dram are inside their package and are not added again). Modern kernels make `energy_uj`
  readable by root only: then the energy is null with that reason.

The energy loop is its own pass after timing: calls back to back, no L2 flush (a flush would be
counted as the call's energy), so it is the energy of a warm-cache call. It lasts at least the
counter's `min_loop_s` and is lengthened (more calls) to get there; when the time allowed for
measuring (the case's sample time) is shorter than that, the energy is null with the reason.

Honest limits: both counters cover the whole device (GPU) or package (CPU): idle power and, on a
shared CPU, other processes' work are inside the figure. The per-token figure divides by
B·Lq tokens of the call (one token per sequence in decode).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

NVML_UPDATE_S = 0.1  # worst case of the counter's 20-100 ms refresh
RAPL_UPDATE_S = 1e-3  # RAPL refreshes about every millisecond
TARGET_REL = 0.1  # one missed refresh costs at most this fraction of the loop's energy
MIN_LOOP_S = 0.05  # never shorter than this, however fine the counter
POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Meter:
    """A cumulative energy counter: read() gives raw counter values (one per domain), delta_j
    the joules between two readings; `reason` says why there is none."""

    source: str  # "nvml" | "rapl"
    scope: str
    resolution_j: float
    update_s: float
    read: Callable[[], tuple[int, ...] | None] | None = None
    wrap: tuple[int, ...] = ()  # per domain: the value past which the counter restarts at 0 (0: never)
    unit_j: float = 1e-3
    reason: str | None = None

    @property
    def min_loop_s(self) -> float:
        return max(MIN_LOOP_S, self.update_s / TARGET_REL)

    def delta_j(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        total = 0
        for i, (a, b) in enumerate(zip(before, after)):
            wrap = self.wrap[i] if i < len(self.wrap) else 0
            total += b - a if b >= a or not wrap else b + wrap - a
        return total * self.unit_j


def nvml_meter(nvml) -> Meter:
    """The GPU's total-energy counter through a telemetry.Nvml handle."""
    base = dict(source="nvml", scope="the whole GPU (idle power included)", resolution_j=1e-3,
                update_s=NVML_UPDATE_S)
    if not nvml.ok:
        return Meter(**base, reason=nvml.reason)
    if nvml.energy_mj() is None:
        return Meter(**base, reason="NVML has no total-energy counter on this GPU (Volta or later needed)")

    def read() -> tuple[int, ...] | None:
        mj = nvml.energy_mj()
        return None if mj is None else (mj,)

    return Meter(**base, read=read)


def rapl_meter(root: Path = POWERCAP) -> Meter:
    """The CPU packages' RAPL counters under `root` (the powercap sysfs tree)."""
    base = dict(source="rapl", scope="the CPU package(s): every process on them, idle power included",
                resolution_j=1e-6, update_s=RAPL_UPDATE_S, unit_j=1e-6)
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1) if root.is_dir() else []
    if not zones:
        return Meter(**base, reason=f"no RAPL package counters under {root} (not an Intel/AMD RAPL machine, "
                                    "or powercap not exposed, e.g. in a container)")
    try:
        wrap = tuple(int((z / "max_energy_range_uj").read_text()) for z in zones)
        for z in zones:
            int((z / "energy_uj").read_text())
    except (OSError, ValueError) as e:
        return Meter(**base, reason=f"RAPL counters under {root} unreadable: {getattr(e, 'strerror', None) or e}"
                                    " (energy_uj is root-only on recent kernels)")

    def read() -> tuple[int, ...] | None:
        try:
            return tuple(int((z / "energy_uj").read_text()) for z in zones)
        except (OSError, ValueError):
            return None

    return Meter(**base, read=read, wrap=wrap)


def meter_for(device_type: str, nvml, powercap: Path = POWERCAP) -> Meter:
    """NVML's counter when an NVML handle is open (GPU runs); RAPL on a CPU run without one."""
    if nvml is not None and nvml.ok or device_type == "cuda":
        return nvml_meter(nvml)
    return rapl_meter(powercap)


def planned_loop_seconds(device_type: str, allowed_s: float, powercap: Path = POWERCAP) -> float:
    """How long a case's energy loop will run (for the plan, run/forecast.py): NVML's minimum loop on
    a GPU (assumed present there), RAPL's on a CPU where readable; 0 where no loop runs."""
    if device_type == "cuda":
        need = max(MIN_LOOP_S, NVML_UPDATE_S / TARGET_REL)
    else:
        meter = rapl_meter(powercap)
        if meter.reason:
            return 0.0
        need = meter.min_loop_s
    return need if allowed_s >= need else 0.0


def unavailable(meter: Meter, reason: str) -> dict:
    return {"energy_j": None, "energy_j_per_token": None, "source": meter.source, "reason": reason}


def measure(call: Callable[[], object], sync: Callable[[], None], meter: Meter, per_call_s: float,
            tokens: int, max_loop_s: float) -> dict:
    """The record's `energy`: joules per call and per token from a loop of back-to-back calls
    lasting at least meter.min_loop_s (lengthened to get there); null with the reason when the
    counter is missing or max_loop_s (the time allowed) is shorter than min_loop_s."""
    if meter.reason or meter.read is None:
        return unavailable(meter, meter.reason or "no counter")
    need = meter.min_loop_s
    if max_loop_s < need:
        return unavailable(meter, f"the energy loop must last >= {need:g} s (the {meter.source} counter refreshes "
                                  f"every {meter.update_s:g} s; {TARGET_REL:.0%} resolution) and the case allows "
                                  f"{max_loop_s:g} s of measuring")
    chunk = max(1, math.floor(0.01 / max(per_call_s, 1e-9)))  # calls between clock checks (~10 ms)
    sync()
    before, t0, calls = meter.read(), time.perf_counter(), 0
    while time.perf_counter() - t0 < need:
        for _ in range(chunk):
            call()
        calls += chunk
        sync()
    elapsed = time.perf_counter() - t0
    after = meter.read()
    if before is None or after is None:
        return unavailable(meter, f"the {meter.source} counter could not be read during the loop")
    joules = meter.delta_j(before, after)
    per_call = joules / calls
    return {"energy_j": per_call, "energy_j_per_token": per_call / max(1, tokens), "source": meter.source,
            "scope": meter.scope, "loop_s": elapsed, "calls": calls, "tokens_per_call": tokens,
            "mean_power_w": joules / elapsed if elapsed > 0 else None, "counter_resolution_j": meter.resolution_j,
            "counter_update_s": meter.update_s, "min_loop_s": need, "reason": None}
