"""Peak memory of one call, measured in a pass of its own (never during timing).

CPU: pin glibc's mmap threshold low (every large block its own mapping), trim the heap, fence
its free chunks, write 5 to /proc/self/clear_refs, which resets VmHWM (the peak RSS) to the
current RSS, run the call, read VmHWM from /proc/self/status: the rise above the RSS before is
the call's peak. It
counts every byte the process touched (torch, BLAS workspaces, Python objects). Calls are timed
in another allocator state (timing_allocator), restored after the memory pass; it reuses a
repeated call's temporaries only after up to ~10 calls (see there), which the timing warmup covers.
GPU: synchronize, reset the allocator's peak statistics, run, peak minus baseline
(torch.cuda.max_memory_allocated); NVML's device-wide `used` is added as context.
"""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Peak:
    bytes: int | None
    source: str  # "cuda-allocator" | "cpu-vmhwm" | "unavailable: <why>"
    device_used_bytes: int | None = None  # NVML device-wide `used` after the call (GPU)
    output: object = field(default=None, repr=False, compare=False)  # what the call returned


def _status_kib(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    if not m:
        raise OSError(f"{field} not in {_STATUS}")
    return int(m.group(1))


def cpu_peak_supported() -> str | None:
    """None when VmHWM can be reset here, else the reason."""
    try:
        _CLEAR_REFS.write_text("5")
        _status_kib("VmHWM")
    except OSError as e:
        return f"cannot reset peak RSS via /proc/self/clear_refs ({e.strerror or e})"
    return None


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_MAX = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: its dynamic ceiling


def _mallopt(param: int, value: int) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to set


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim), so memory cached by earlier calls
    does not hide this call's allocations inside the RSS before it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@functools.cache
def _mallinfo2() -> Callable[[], object] | None:
    try:
        import ctypes

        class Mallinfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                "fordblks", "keepcost")]

        fn = ctypes.CDLL("libc.so.6").mallinfo2
        fn.restype = Mallinfo2
        return fn
    except (OSError, AttributeError):
        return None


def heap_bytes() -> int | None:
    """Bytes glibc's arenas have taken from the OS (mallinfo2's `arena`: the heap, not the large
    blocks mmapped apart), None where that is not glibc >= 2.33. It changes only when a call's
    blocks did not fit in the free heap (or the heap was trimmed): the sign the allocator is not
    yet in its steady state (time_cpu warms up until it stops changing)."""
    fn = _mallinfo2()
    return None if fn is None else int(fn().arena)


def timing_allocator() -> None:
    """The allocator state calls are timed in: glibc's own steady state for a process that
    repeats a call. By default glibc raises its mmap threshold to the size of each large block
    freed (up to 32 MiB) and its trim threshold to twice that, so a repeated call's temporaries
    come back from the heap instead of fresh, page-faulted mappings. Fixed at the ceiling here,
    so the state does not depend on which case ran before (mallopt also turns the dynamic rule
    off). Blocks over 32 MiB are mmapped, and page-faulted, on every call: in a user's process too.
    Reuse is not immediate: torch takes CPU blocks with posix_memalign(64), which (glibc 2.36)
    asks for the block plus 96 bytes and frees the slivers cut off either side into the thread's
    tcache, where they stay in use for coalescing; a freed block alone is too small for the next
    request, so the heap grows by a fresh, page-faulted block per call until the slivers merge.
    Measured for an 8 MiB temporary in fresh processes: the last faulting call was the 2nd to
    the 10th, varying run to run (allocation history of the import, not threads or load: the
    same with one thread; with tcache off, GLIBC_TUNABLES=glibc.malloc.tcache_count=0, only the
    first call faults). Nor is it monotone: the heap grows in bursts with quiet calls between
    them (up to 10 seen; once the last burst came after the 16th call). Hence time_cpu's 16
    warm-up calls at least, then, if the heap grew over one, on until heap_bytes has not changed
    for 24 calls in a row."""
    _mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)
    _mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_MAX)


def memory_pass_allocator(nbytes: int = 128 * 1024) -> None:
    """The allocator state memory is measured in: the free heap is trimmed, then every block of
    `nbytes` or more is its own mapping (a block is cut from the heap's free top before glibc
    considers mmap, hence the trim), so VmHWM's rise is the call's own memory, not heap slack left
    by earlier calls. peak_cpu switches to it for its one call, then back to timing_allocator."""
    _mallopt(_M_MMAP_THRESHOLD, nbytes)
    _mallopt(_M_TRIM_THRESHOLD, nbytes)
    _trim_heap()


class _HeapFence:
    """Holds the heap's free chunks of `nbytes` and more for the memory pass, so the call's large
    blocks are fresh mappings. glibc serves a request from its free chunks before it considers
    mmap; chunks freed in the timing state (trimmed, so not resident) would otherwise take the
    call's blocks and keep their pages after free, and a later block cut elsewhere counts twice
    (an L=1024 eager call read 48.7 MiB instead of 32.8). malloc takes chunks untouched but for
    a header; the first block that comes back mmapped means none is left. Freed on exit."""

    def __init__(self, nbytes: int = 128 * 1024, limit: int = 1 << 20):
        self.nbytes, self.limit, self.held = nbytes, limit, []

    def __enter__(self) -> "_HeapFence":
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
            libc.free.argtypes = [ctypes.c_void_p]
        except (OSError, AttributeError):
            return self  # not glibc
        self._free = libc.free
        while len(self.held) < self.limit:
            p = libc.malloc(self.nbytes)
            if not p:
                break
            if ctypes.c_size_t.from_address(p - 8).value & 2:  # IS_MMAPPED in the chunk's size
                libc.free(p)
                break
            self.held.append(p)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.held:
            self._free(p)
        self.held = []


@contextmanager
def memory_pass() -> Iterator[None]:
    """The memory pass's whole allocator state: memory_pass_allocator with the heap's free chunks
    fenced, then back to timing_allocator. Both parts are needed: a free chunk left in the middle
    of the heap by timed calls is not trimmed away and would serve the call's blocks."""
    memory_pass_allocator()
    try:
        with _HeapFence():
            yield
    finally:
        timing_allocator()


def peak_cpu(fn: Callable[[], object]) -> Peak:
    """One call's peak RSS rise, in the memory_pass state."""
    why = cpu_peak_supported()
    if why:
        return Peak(None, f"unavailable: {why}")
    with memory_pass():
        return _vmhwm_rise(fn)


def _vmhwm_rise(fn: Callable[[], object]) -> Peak:
    _CLEAR_REFS.write_text("5")
    before = _status_kib("VmRSS")
    out = fn()
    peak = _status_kib("VmHWM")
    return Peak(max(0, peak - before) * 1024, "cpu-vmhwm", output=out)


def peak_cuda(fn: Callable[[], object], nvml_used: Callable[[], int | None] = lambda: None) -> Peak:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return Peak(peak, "cuda-allocator", nvml_used(), output=out)


def free_bytes(device: torch.device) -> int:
    """Memory a case may still use: cudaMemGetInfo's free on a GPU, MemAvailable on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    m = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return int(m.group(1)) * 1024 if m else 0
