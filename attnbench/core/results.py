"""Results: JSON Lines with a versioned schema.

Line 1 is the header: {"type": "header", "schema_version", "tool", "created", "command", "env",
"refs"}; every further line is one record: {"type": "record", ...RECORD_FIELDS}. Each record is
flushed (and fsynced) as its case finishes, so a killed run leaves a readable file; a truncated
last line is ignored with a warning when reading. See docs/results-schema.md.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "timeout", "error", "killed", "unsupported", "skipped", "unavailable", "wrong")

RECORD_FIELDS = (
    "case_id", "variant", "backend", "device", "dtype", "mode", "batch", "heads", "kv_heads",
    "seq_q", "seq_k", "head_dim", "causal", "params", "status", "reason", "latency_ms",
    "samples_ms", "setup_ms", "first_call_ms", "peak_mem_bytes", "mem_source", "mem_model_bytes",
    "flops", "bytes", "kv_cache_bytes", "tflops", "gbps", "roofline_frac", "error", "kernel",
    "threads", "telemetry", "wall_s",
)
# Fields added within schema version 1: written by every run now, absent from older
# files, so a reader must not require them. See docs/results-schema.md.
OPTIONAL_RECORD_FIELDS = ("flags", "inputs", "attn_entropy", "roof", "timing")
# Ragged batches (variants/paged.py): only in records of variants with a seq_dist parameter.
OPTIONAL_RECORD_FIELDS += ("seq_dist", "seq_lengths", "padding_frac")
# Energy per call (measure/energy.py) and the clocks sampled during the timed loop (measure/clocks.py).
OPTIONAL_RECORD_FIELDS += ("clocks", "energy")
# Variants whose cost has parts (Variant.cost_parts, e.g. DSA's indexer and attention):
# {part: {"flops", "bytes"}}, scaled by the mode like flops and bytes.
OPTIONAL_RECORD_FIELDS += ("cost_parts",)
# Mixed batches (run --batch-spec, core/batch_spec.py): the spec, its composition [{count, q_len,
# kv_len}] and the packed query rows; seq_lengths and padding_frac then describe the mixed batch.
OPTIONAL_RECORD_FIELDS += ("batch_spec", "composition", "q_tokens")
# The `attnbench run` command that reruns the case (core/repro.py).
OPTIONAL_RECORD_FIELDS += ("repro",)
# Backends from a user's file or an installed package (variants/user.py): where the backend comes
# from, and its check against the oracle before timing (run/precheck.py).
OPTIONAL_RECORD_FIELDS += ("backend_source", "precheck")


# ---- record flags (`flags`: a list of short strings; docs/results-schema.md)
LOW_SAMPLES = 5  # fewer latency samples than this: `low_samples`
HIGH_VARIANCE = 0.10  # IQR/median above this: `high_variance` (torch Compare's "(! 12%)")
MIN_SPREAD_SAMPLES = 3  # fewer samples: no spread is shown or judged, only n
ROOF_SLACK = 1.05  # roofline_frac above this: `above_roof`, with `roof.reason`
FLAGS = ("low_samples", "high_variance", "throttled", "above_roof", "worse_than_zeros", "contended")


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


def case_id(problem: dict, variant: str, backend: str, device: str, identity: dict | None = None) -> str:
    """A stable id of a case: everything that changes its measurement. The resolved problem
    (shape, dtype, mode, params), variant, backend and device type, plus `identity`: threads,
    device name and the backend's version (runner.case_identity), so two environments never
    share an id (`merge --allow-env-mismatch` keeps both)."""
    key = {"p": problem, "v": variant, "b": backend, "d": device}
    if identity:
        key["i"] = identity
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_header(command: list[str], env: dict, refs: dict | None, catalogue: dict | None = None,
                settings: dict | None = None) -> dict:
    """The first line of a results file. `catalogue`: variants.registry.describe of the run's
    variants, so that readers (report, show, gate) need not import the variants (nor torch);
    `settings`: how the cases were measured (run/settings.py RunSettings.header)."""
    header = {"type": "header", "schema_version": SCHEMA_VERSION, "tool": "attnbench",
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "env": env,
              "refs": refs, "catalogue": catalogue or {}}
    return header | ({"settings": settings} if settings is not None else {})


class Writer:
    """Appends records to a JSONL file: each line one complete ``os.write`` (O_APPEND), fsynced.

    A write that fails (disk full, read-only, permission, I/O error) is cut back to the last
    complete record (``ftruncate``) and raises OutputError saying what failed and what was kept.
    A new file whose header cannot be written is removed. Replacing an existing file (``--force``)
    writes into a temporary sibling and renames it over the old file only once its first record
    is safely on disk: until then the old file is untouched. With ``discard_empty`` a file (or
    temporary) this writer created and never gave a record is removed on close, so a run that
    ends before its first case leaves no header-only file.
    """

    def __init__(self, path: Path, header: dict, append: bool = False, discard_empty: bool = False):
        from attnbench.core.safe_io import OutputError, why

        self.path = Path(path)
        self.records = 0
        self._discard_empty = discard_empty
        self._pending: Path | None = None  # temporary sibling renamed over `path` at the first record
        self._created: Path | None = None
        if append and self.path.exists() and self.path.stat().st_size:
            _ensure_newline_terminated(self.path)
            self._fd = self._open(self.path, os.O_WRONLY | os.O_APPEND)
            self._good = os.fstat(self._fd).st_size
            return
        target = self.path
        special = self.path.exists() and not self.path.is_file()  # a device or a pipe: written in place
        if self.path.exists() and not special:
            target = self._pending = self.path.with_name(f".{self.path.name}.new{os.getpid()}")
        self._fd = self._open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC)
        self._created, self._good = (None if special else target), 0  # never removed when special
        try:
            self._write(header)
        except OutputError as e:
            self._drop()
            kept = "the existing file is unchanged" if self._pending else "nothing was written"
            raise OutputError(f"cannot write '{self.path}': {why(e)}; {kept}", why(e)) from None

    def _open(self, path: Path, flags: int) -> int:
        from attnbench.core.safe_io import OutputError, why

        try:
            return os.open(path, flags, 0o644)
        except OSError as e:
            raise OutputError(f"cannot write '{self.path}': {why(e)}; nothing was written", why(e)) from None

    def _write(self, obj: dict) -> None:
        from attnbench.core.safe_io import OutputError, why

        data = json_line(obj)
        try:
            n = os.write(self._fd, data)
            if n != len(data):
                raise OSError(errno.ENOSPC, f"No space left on device (a short write: {n} of {len(data)} bytes)")
            os.fsync(self._fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._good)
            raise OutputError(str(e), why(e)) from None
        self._good += len(data)

    def write(self, record: dict) -> None:
        """Append one record, whole and counted: a stop signal arriving meanwhile is handled only
        once the record is on disk and known to this writer (safe_io.signals_deferred)."""
        from attnbench.core.safe_io import OutputError, fsync_dir, signals_deferred, why

        with signals_deferred():
            try:
                self._write({"type": "record", **record})
            except OutputError as e:
                kept = ("the existing file is unchanged" if self._pending else
                        f"kept {self.records} complete records ({self._good} bytes)")
                raise OutputError(f"cannot write '{self.path}': {why(e)}; {kept}; free space (or fix the "
                                  f"permission) and rerun with --resume", why(e)) from None
            self.records += 1
            if self._pending is not None:  # the new file has a record: only now replace the old one
                os.replace(self._pending, self.path)
                fsync_dir(self.path.parent)
                self._pending = self._created = None

    def _drop(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1
        if self._created is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._created)

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._pending is not None or (self._discard_empty and self.records == 0 and self._created):
            self._drop()
            return
        os.close(self._fd)
        self._fd = -1

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


def json_line(obj: Any) -> bytes:
    """The one serialisation of a header, record or journal row: one JSON line, NaN and infinities
    as null, numpy scalars as numbers."""
    return (json.dumps(_finite(obj), default=_jsonable, allow_nan=False) + "\n").encode("utf-8")


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
    from pydantic import ValidationError

    from attnbench.core.schema import RecordModel, first_error

    try:
        RecordModel.model_validate(obj)  # types and finiteness of every field
    except ValidationError as e:
        raise ResultsError(first_error(e, f"{path}:{n}: ")) from None
    return obj


def to_frame(records: list[dict]):
    """A pandas DataFrame, one row per record, latency statistics flattened (latency_median, ...)."""
    import pandas as pd

    rows = []
    for r in records:
        row = {k: v for k, v in r.items()
               if k not in ("latency_ms", "samples_ms", "telemetry", "error", "type", "clocks", "energy")}
        for k, v in (r.get("latency_ms") or {}).items():
            row[f"latency_{k}"] = v
        energy = r.get("energy") or {}
        row["energy_j"], row["energy_j_per_token"] = energy.get("energy_j"), energy.get("energy_j_per_token")
        row["throttled_excluded_frac"] = (r.get("clocks") or {}).get("excluded_frac")
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
    """Write to a temporary file beside `path`, fsync, then rename over it. On a failed write
    the temporary is removed, `path` is left as it was, and OutputError says why."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    from attnbench.core.safe_io import OutputError, why

    path = Path(path)
    if path.exists() and not path.is_file():  # a device or a pipe (/dev/stdout, /dev/full): written in place
        try:
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
        except OSError as e:
            raise OutputError(f"cannot write '{path}': {why(e)}", why(e)) from None
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        kept = "the earlier file is unchanged" if path.exists() else "nothing was written"
        raise OutputError(f"cannot write '{path}': {why(e)}; {kept}", why(e)) from None


# Fields that must match for two results to be comparable (used by the regression gate).
FINGERPRINT_FIELDS = ("device", "device_name", "torch", "triton", "cuda", "threads")


def fingerprint(env: dict) -> dict:
    return {k: env.get(k) for k in FINGERPRINT_FIELDS}
