"""GPU telemetry from NVML (nvidia-ml-py, imported as pynvml): SM clock, clock-event
(throttle) reasons and power before and after each case, device-wide memory `used` (v2), the
total-energy counter (read by measure/energy.py around its own loop) and the clocks the
background sampler (measure/clocks.py) reads during the timed loop.
Where NVML is absent every field is None and `reason` says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Reasons that mean the GPU slowed itself down (idle and app-clock settings are not throttling).
THROTTLE_BITS = {
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
        reasons_fn = self._reasons_fn()
        return Snapshot(
            sm_clock_mhz=self._try(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
            power_w=power / 1000 if power is not None else None,
            clock_event_reasons=self._try(reasons_fn),
            energy_mj=self._try(nv.nvmlDeviceGetTotalEnergyConsumption),
        )

    def energy_mj(self) -> int | None:
        """The total-energy counter (mJ since the driver loaded), None without one."""
        return self._try(self._nv.nvmlDeviceGetTotalEnergyConsumption) if self.ok else None

    def clocks(self) -> tuple[int | None, int | None, float | None, int | None]:
        """(SM MHz, memory MHz, power W, clock-event reason bits) now; None where unknown."""
        if not self.ok:
            return None, None, None, None
        nv = self._nv
        power = self._try(nv.nvmlDeviceGetPowerUsage)
        return (self._try(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM),
                self._try(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM),
                power / 1000 if power is not None else None, self._try(self._reasons_fn()))

    def _reasons_fn(self):
        nv = self._nv
        # the newer name; drivers before 535 only have the deprecated "throttle" one
        return (getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
                or nv.nvmlDeviceGetCurrentClocksThrottleReasons)

    def used_bytes(self) -> int | None:
        if not self.ok:
            return None
        nv = self._nv
        try:
            return nv.nvmlDeviceGetMemoryInfo(self.handle, version=nv.nvmlMemory_v2).used
        except Exception:
            info = self._try(nv.nvmlDeviceGetMemoryInfo)
            return info.used if info is not None else None


def is_throttled(reasons: int | None) -> bool | None:
    """A power or thermal clock-event bit is set (None: reasons unknown)."""
    return None if reasons is None else bool(reasons & sum(THROTTLE_BITS.values()))


def throttled(before: Snapshot, after: Snapshot) -> bool | None:
    reasons = [s.clock_event_reasons for s in (before, after) if s.clock_event_reasons is not None]
    if not reasons:
        return None
    mask = sum(THROTTLE_BITS.values())
    return any(r & mask for r in reasons)


def summarize(nvml: Nvml, before: Snapshot, after: Snapshot) -> dict:
    """The telemetry fields of a record (the energy per call is the record's `energy`)."""
    if not nvml.ok:
        return {"available": False, "reason": nvml.reason}
    return {"available": True, "before": asdict(before), "after": asdict(after),
            "throttled": throttled(before, after)}
