"""What a failed call means, as record fields: `oom` when the allocator (or the OS) ran out of
memory, else `error` with the exception's type, its message on one line and where it was raised.
Honest limit: an OOM is recognised by the exception's type and message; a process killed from
outside is classified by whoever watched it die (run/worker.py), not here."""

from __future__ import annotations

import os
import re
import traceback

import torch


def failure_fields(e: BaseException) -> dict:
    if is_oom(e):
        return {"status": "oom", "reason": one_line(e)}
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" (at {os.path.basename(where.filename)}:{where.lineno})" if where else ""
    return {"status": "error", "reason": f"{type(e).__name__}: {one_line(e)}{at}"}


def is_oom(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower())
    )


_DIAGNOSTIC = re.compile(r"(^|\s)(fatal )?error:", re.IGNORECASE)


def one_line(e: BaseException, limit: int = 1000) -> str:
    """The message on one line: its first non-empty line and, for a message that wraps a compiler's
    output (torch.compile's C++ or Triton build errors put the command line first), the first
    diagnostic line ("error: ..."), which is what says why. Cut at `limit` characters only."""
    lines = [" ".join(ln.split()) for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return type(e).__name__
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", lines[0])  # torch's C++ prefix
    diag = next((ln for ln in lines[1:] if _DIAGNOSTIC.search(ln)), None)
    text = first if diag is None or diag in first else f"{first} … {diag}"
    return text[:limit] + ("…" if len(text) > limit else "")


def _cgroup_oom_files() -> list[str]:
    out = []
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrl, rel = line.rstrip("\n").split(":", 2)
                if ctrl == "":
                    out.append(f"/sys/fs/cgroup{rel}/memory.events")
                elif "memory" in ctrl.split(","):
                    out.append(f"/sys/fs/cgroup/memory{rel}/memory.oom_control")
    except (OSError, ValueError):
        pass
    return out


def oom_kill_count() -> int | None:
    """The kernel's count of out-of-memory kills (/proc/vmstat oom_kill, Linux >= 4.13; the
    cgroup's memory.events when this process is in a cgroup v2 with a memory controller, which
    counts kills of a container's limit too; memory.oom_control in cgroup v1); None where none can be read."""
    counts = []
    try:
        with open("/proc/vmstat") as f:
            counts += [int(ln.split()[1]) for ln in f if ln.startswith("oom_kill ")]
    except (OSError, ValueError, IndexError):
        pass
    for path in _cgroup_oom_files():
        try:
            with open(path) as f:
                counts += [int(ln.split()[1]) for ln in f if ln.startswith("oom_kill ")]
        except (OSError, ValueError, IndexError):
            pass
    return sum(counts) if counts else None
