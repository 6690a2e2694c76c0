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


def one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?", "", text)  # torch's C++ prefix
    return text[:limit] + ("…" if len(text) > limit else "")
