"""In-run references kept between runs, so that a plan (`run --dry-run`) reuses the ones a recent
run or plan measured on this machine instead of measuring them again.

One JSON file per environment under `$XDG_CACHE_HOME/attnbench/` (default `~/.cache/attnbench/`;
`$ATTNBENCH_CACHE_DIR` overrides both),
named by a hash of the environment fingerprint (device, device name, torch, triton, CUDA, threads)
and the attnbench version; the file repeats them, and an entry is used only when they are equal.
Each entry (the copy levels; the GEMM of each dtype) carries when it was measured and how long
measuring took; a run also keeps the seconds from starting its worker to having its references
(per set of dtypes): the start-up a plan of the next run predicts. An entry older than MAX_AGE_S,
from another fingerprint or version, or a file that cannot be read is ignored (measured afresh).

Honest limits: the references say how fast the machine was when they were measured; a plan made
from cached ones assumes it is as fast now (on a machine whose load changed since, the plan is off
by that change; the run's ETA corrects itself from the cases it finishes). Records never use cached
references: every run measures its own in its worker (and stores them here). A cache that cannot be
written (read-only home) is skipped silently: it only saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from attnbench import __version__
from attnbench.core.results import atomic_write_text, fingerprint

FORMAT = 1
MAX_AGE_S = 6 * 3600.0  # a plan made from references older than this would guess today's speed
# A worker's start before its references: spawn, import torch and attnbench's measuring modules,
# one warm-up memory pass (1.6 s of CPU here; more wall time on a loaded machine). Used only when
# no run in this environment has measured its own start-up yet.
WORKER_START_S = 3.0


def cache_dir() -> Path:
    """$ATTNBENCH_CACHE_DIR, else $XDG_CACHE_HOME/attnbench, else ~/.cache/attnbench."""
    if os.environ.get("ATTNBENCH_CACHE_DIR"):
        return Path(os.environ["ATTNBENCH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnbench"


def _key(env: dict) -> dict:
    return {"format": FORMAT, "attnbench": __version__, "fingerprint": fingerprint(env)}


def cache_path(env: dict) -> Path:
    digest = hashlib.sha1(json.dumps(_key(env), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / f"refs-{env.get('device', 'unknown')}-{digest}.json"


def _entries(env: dict, now: float) -> dict:
    """The fresh entries of this environment's file: {"copy": e, "gemm": {dtype: e}} (maybe empty)."""
    try:
        data = json.loads(cache_path(env).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("key") != json.loads(json.dumps(_key(env), default=str)):
        return {}

    def fresh(e) -> bool:
        if not (isinstance(e, dict) and isinstance(e.get("value"), dict) and isinstance(e.get("at"), (int, float))):
            return False
        return 0 <= now - e["at"] <= MAX_AGE_S

    out: dict = {"gemm": {d: e for d, e in (data.get("gemm") or {}).items() if fresh(e)},
                 "startup": {k: e for k, e in (data.get("startup") or {}).items()
                             if fresh({"value": {}, **e}) and isinstance(e.get("seconds"), (int, float))}}
    if fresh(data.get("copy")):
        out["copy"] = data["copy"]
    return out


def load(env: dict, dtypes: tuple[str, ...], now: float | None = None) -> tuple[dict, float, float] | None:
    """(refs, seconds measuring them took, age in seconds of the oldest entry) when every entry the
    dtypes need is cached and fresh, else None."""
    now = time.time() if now is None else now
    e = _entries(env, now)
    if "copy" not in e or any(d not in e["gemm"] for d in dtypes):
        return None
    used = [e["copy"], *(e["gemm"][d] for d in dtypes)]
    refs = {"gemm": {d: e["gemm"][d]["value"] for d in dtypes}, "copy": e["copy"]["value"]}
    return refs, sum(float(u.get("took_s", 0.0)) for u in used), now - min(u["at"] for u in used)


def store(env: dict, refs: dict, took_s: float | None, startup_s: float | None = None,
          now: float | None = None) -> None:
    """Keep `refs` (measure.refs.measure's dict) for this environment, beside the fresh entries of
    other dtypes already there. took_s: seconds measuring them took; startup_s: seconds a run spent
    from starting its worker to having them (then took_s may be None: startup_s − WORKER_START_S)."""
    now = time.time() if now is None else now
    gemm = refs.get("gemm") or {}
    if took_s is None:
        took_s = max(0.0, (startup_s or 0.0) - WORKER_START_S)
    share = took_s / (len(gemm) + 1)  # the copy levels and each GEMM take about as long
    e = _entries(env, now)
    data = {
        "key": _key(env),
        "copy": {"value": refs["copy"], "at": now, "took_s": share} if refs.get("copy") else e.get("copy"),
        "gemm": {**e.get("gemm", {}), **{d: {"value": g, "at": now, "took_s": share} for d, g in gemm.items()}},
        "startup": {**e.get("startup", {}),
                    **({",".join(sorted(gemm)): {"seconds": startup_s, "at": now}} if startup_s else {})},
    }
    with contextlib.suppress(OSError):  # OutputError is one
        cache_path(env).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_path(env), json.dumps(data, default=str))


def startup_seconds(env: dict, dtypes: tuple[str, ...], refs_took_s: float, now: float | None = None) -> float:
    """What a run spends before its first case: the start-up a recent run with these dtypes
    measured (worker start, imports, references), else WORKER_START_S plus the references' time."""
    now = time.time() if now is None else now
    known = _entries(env, now).get("startup", {}).get(",".join(sorted(dtypes)))
    return float(known["seconds"]) if known else WORKER_START_S + refs_took_s
