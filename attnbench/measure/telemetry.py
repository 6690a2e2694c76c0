"""GPU telemetry from NVML (nvidia-ml-py, imported as pynvml): SM clock, clock-event
(throttle) reasons and power before and after each case, device-wide memory `used` (v2), and
energy from the total-energy counter for cases of at least a second (it ticks every 20-100 ms).
Where NVML is absent every field is None and `reason` says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Reasons that mean the GPU slowed itself down (idle and app-clock settings are not throttling).
_THROTTLE_BITS = {
    "sw_power_cap": 0x4, "hw_slowdown": 0x8, "sw_thermal": 0x20, "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
}


@dataclass(frozen=True)
class Snapshot:
    sm_clock_mhz: int | None = None
    power_w: float | None = None
    clock_event_reasons: int | None = None
    energy_mj: int | None = None


class Nvml:
    """A handle on one GPU, or an explanation of why there is none."""

    def __init__(self, index: int = 0):
        self.handle = None
        self.reason: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nv = pynvml
        except ImportError:
            self.reason = "nvidia-ml-py (pynvml) is not installed"
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.reason = f"NVML unavailable: {type(e).__name__}: {e}"

    @property
    def ok(self) -> bool:
        return self.handle is not None

    def _try(self, call, *args):
        try:
            return call(self.handle, *args)
        except Exception:  # a counter this GPU does not have: that field stays None
            return None

    def snapshot(self) -> Snapshot:
        if not self.ok:
            return Snapshot()
        nv = self._nv
        power = self._try(nv.nvmlDeviceGetPowerUsage)
        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nv.nvmlDeviceGetCurrentClocksThrottleReasons
        return Snapshot(
            sm_clock_mhz=self._try(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
            power_w=power / 1000 if power is not None else None,
            clock_event_reasons=self._try(reasons_fn),
            energy_mj=self._try(nv.nvmlDeviceGetTotalEnergyConsumption),
        )

    def used_bytes(self) -> int | None:
        if not self.ok:
            return None
        nv = self._nv
        try:
            return nv.nvmlDeviceGetMemoryInfo(self.handle, version=nv.nvmlMemory_v2).used
        except Exception:
            info = self._try(nv.nvmlDeviceGetMemoryInfo)
            return info.used if info is not None else None


def throttled(before: Snapshot, after: Snapshot) -> bool | None:
    reasons = [s.clock_event_reasons for s in (before, after) if s.clock_event_reasons is not None]
    if not reasons:
        return None
    mask = sum(_THROTTLE_BITS.values())
    return any(r & mask for r in reasons)


def summarize(nvml: Nvml, before: Snapshot, after: Snapshot, seconds: float) -> dict:
    """The telemetry fields of a record."""
    if not nvml.ok:
        return {"available": False, "reason": nvml.reason}
    energy = None
    if seconds >= 1.0 and before.energy_mj is not None and after.energy_mj is not None:
        energy = (after.energy_mj - before.energy_mj) / 1000.0
    return {"available": True, "before": asdict(before), "after": asdict(after),
            "throttled": throttled(before, after), "energy_j": energy,
            "energy_reason": None if energy is not None else "case shorter than 1 s or no energy counter"}
