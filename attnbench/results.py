"""Results: JSON Lines with a versioned schema.

Line 1 is the header: {"type": "header", "schema_version", "tool", "created", "command", "env",
"refs"}; every further line is one record: {"type": "record", ...RECORD_FIELDS}. Each record is
flushed (and fsynced) as its case finishes, so a killed run leaves a readable file; a truncated
last line is ignored with a warning when reading. See docs/results-schema.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "timeout", "error", "unsupported", "skipped", "unavailable")

RECORD_FIELDS = (
    "case_id", "variant", "backend", "device", "dtype", "mode", "batch", "heads", "kv_heads",
    "seq_q", "seq_k", "head_dim", "causal", "params", "status", "reason", "latency_ms",
    "samples_ms", "setup_ms", "first_call_ms", "peak_mem_bytes", "mem_source", "mem_model_bytes",
    "flops", "bytes", "kv_cache_bytes", "tflops", "gbps", "roofline_frac", "error", "kernel",
    "threads", "telemetry", "wall_s",
)
# Fields added within schema version 1 (issue 15): written by every run now, absent from older
# files, so a reader must not require them. See docs/results-schema.md.
OPTIONAL_RECORD_FIELDS = ("flags", "inputs", "attn_entropy", "roof", "timing")


# ---- record flags (`flags`: a list of short strings; docs/results-schema.md)
LOW_SAMPLES = 5  # fewer latency samples than this: `low_samples`
HIGH_VARIANCE = 0.10  # IQR/median above this: `high_variance` (torch Compare's "(! 12%)")
MIN_SPREAD_SAMPLES = 3  # fewer samples: no spread is shown or judged, only n
ROOF_SLACK = 1.05  # roofline_frac above this: `above_roof`, with `roof.reason`
FLAGS = ("low_samples", "high_variance", "throttled", "above_roof", "worse_than_zeros")


def timing_flags(lat: dict | None) -> list[str]:
    """low_samples (n < 5) and high_variance (IQR/median > 10 %, judged from 3 samples up) of a
    record's latency_ms."""
    if not lat or lat.get("n") is None:
        return []
    flags = ["low_samples"] if lat["n"] < LOW_SAMPLES else []
    if lat["n"] >= MIN_SPREAD_SAMPLES and lat.get("median") and lat["iqr"] / lat["median"] > HIGH_VARIANCE:
        flags.append("high_variance")
    return flags


def spread_text(lat: dict | None) -> str:
    """The spread of latency_ms for tables: 'n=1'/'n=2' under 3 samples, else the IQR in % of the
    median, marked '(! 12%)' above 10 %."""
    if not lat or not lat.get("median") or lat.get("iqr") is None:
        return "-"
    if lat.get("n") is not None and lat["n"] < MIN_SPREAD_SAMPLES:
        return f"n={lat['n']}"
    rel = 100 * lat["iqr"] / lat["median"]
    return f"(! {rel:.0f}%)" if rel > 100 * HIGH_VARIANCE else f"{rel:.0f}"


class ResultsError(ValueError):
    """A results file that cannot be read: the message says which file and what is wrong."""


def case_id(problem: dict, variant: str, backend: str, device: str) -> str:
    """A stable id of a case: the resolved problem, variant, backend and device."""
    key = json.dumps({"p": problem, "v": variant, "b": backend, "d": device}, sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def make_header(command: list[str], env: dict, refs: dict | None) -> dict:
    return {"type": "header", "schema_version": SCHEMA_VERSION, "tool": "attnbench",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "env": env,
            "refs": refs}


class Writer:
    """Appends records to a JSONL file, one flushed and fsynced line per record."""

    def __init__(self, path: Path, header: dict, append: bool = False):
        self.path = Path(path)
        if append and self.path.exists() and self.path.stat().st_size:
            _ensure_newline_terminated(self.path)
            self._f = open(self.path, "a", encoding="utf-8")
        else:
            self._f = open(self.path, "w", encoding="utf-8")
            self._write(header)

    def _write(self, obj: dict) -> None:
        self._f.write(json.dumps(_finite(obj), default=_jsonable, allow_nan=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def write(self, record: dict) -> None:
        self._write({"type": "record", **record})

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _ensure_newline_terminated(path: Path) -> None:
    """Drop a truncated last line (a killed writer) so appending starts on a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)


def _finite(x: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _jsonable(x: Any):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


def read(path: str | Path) -> tuple[dict, list[dict]]:
    """(header, records) of a results file, validated. Raises ResultsError with one line."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"results file '{path}' does not exist")
    if path.is_dir():
        raise ResultsError(f"'{path}' is a directory, not a results file (.jsonl)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"cannot read '{path}': {e}") from None
    lines = text.split("\n")
    truncated = bool(lines and lines[-1].strip())  # no final newline: the last line may be cut
    rows = [ln for ln in lines if ln.strip()]
    if not rows:
        raise ResultsError(f"'{path}' is empty; expected an attnbench results file (JSON Lines)")
    header = _parse(rows[0], path, 1)
    _check_header(header, path)
    records = []
    for n, line in enumerate(rows[1:], start=2):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if truncated and n == len(rows):
                warnings.warn(f"{path}: ignoring a truncated last line {n} (an interrupted run)")
                break
            raise ResultsError(f"{path}:{n}: not valid JSON; the file is corrupt") from None
        records.append(validate_record(obj, path, n))
    return header, records


def _parse(line: str, path: Path, n: int) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        raise ResultsError(f"{path}:{n}: not JSON; expected an attnbench results file (JSON Lines)") from None
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}:{n}: expected a JSON object")
    return obj


def _check_header(header: dict, path: Path) -> None:
    if header.get("type") != "header" or header.get("tool") != "attnbench":
        raise ResultsError(f"{path}: the first line is not an attnbench header; not an attnbench results file")
    version = header.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(f"{path}: schema_version {version!r} is not supported; this attnbench reads "
                           f"version {SCHEMA_VERSION}")


def validate_record(obj: Any, path: Path | str, n: int) -> dict:
    if not isinstance(obj, dict) or obj.get("type") != "record":
        raise ResultsError(f"{path}:{n}: expected a record object")
    missing = [f for f in RECORD_FIELDS if f not in obj]
    if missing:
        raise ResultsError(f"{path}:{n}: record lacks {', '.join(missing[:5])}")
    if obj["status"] not in STATUSES:
        raise ResultsError(f"{path}:{n}: unknown status {obj['status']!r}; expected one of {', '.join(STATUSES)}")
    return obj


def to_frame(records: list[dict]):
    """A pandas DataFrame, one row per record, latency statistics flattened (latency_median, ...)."""
    import pandas as pd

    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("latency_ms", "samples_ms", "telemetry", "error", "type")}
        for k, v in (r.get("latency_ms") or {}).items():
            row[f"latency_{k}"] = v
        for k, v in (r.get("error") or {}).items():
            row[f"error_{k}"] = v
        row["params"] = json.dumps(r.get("params") or {}, sort_keys=True)
        rows.append(row)
    return pd.DataFrame(rows)


def iter_records(paths: list[str | Path]) -> Iterator[tuple[dict, dict]]:
    for p in paths:
        header, records = read(p)
        for r in records:
            yield header, r


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def eprint(msg: str) -> None:
    print(msg, file=sys.stderr)
