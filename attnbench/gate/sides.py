"""One side of a comparison: the cases of one or more results files of the same environment,
matched by their full identity, with latency samples optionally normalised per run.

Identity of a case: variant, backend, device, dtype, mode, batch, heads, kv_heads, seq_q,
seq_k, head_dim, causal and params — the fields the case_id hashes, compared field by field.
Several runs of one side (a gate's re-run, an A/B's rounds) are merged: each run's samples,
normalised by that run's own reference, kept as one group (the bootstrap resamples runs, then
samples), peak memory the median of the runs' peaks.

Normalisation (`--normalize`):
  none   samples as measured (ms)
  gemm   each sample divided by the run's in-run GEMM reference time (header refs.gemm[dtype])
  CASE   each sample divided by the median of a named case of the same run, written
         VARIANT:BACKEND[:key=value...], e.g. mha:sdpa:seq=1024 (seq is the swept length:
         seq_q, or seq_k in decode mode; other keys: any identity field).
A normalised ratio removes what slows the whole machine evenly (another tenant, a lower clock);
the reference's own noise is not in the bootstrap interval (it is treated as exact).
"""

from __future__ import annotations

import json
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.core.correctness import why_wrong
from attnbench.core.errors import UsageError
from attnbench.core.results import FINGERPRINT_FIELDS, fingerprint

ID_FIELDS = (
    "variant",
    "backend",
    "device",
    "dtype",
    "mode",
    "batch",
    "heads",
    "kv_heads",
    "seq_q",
    "seq_k",
    "head_dim",
    "causal",
)
_INT_KEYS = {"batch", "heads", "kv_heads", "seq_q", "seq_k", "head_dim", "seq"}


def case_key(rec: dict) -> str:
    """The identity of a record's case as a stable string (matching is on these fields)."""
    ident = {f: rec.get(f) for f in ID_FIELDS} | {"params": rec.get("params") or {}}
    return json.dumps(ident, sort_keys=True)


def case_label(rec: dict) -> str:
    """Short human name: mha/sdpa fwd B1 H8/8 L256x256 D64 float32 [causal] [k=v]."""
    s = (
        f"{rec['variant']}/{rec['backend']} {rec['mode']} B{rec['batch']} H{rec['heads']}/{rec['kv_heads']} "
        f"L{rec['seq_q']}x{rec['seq_k']} D{rec['head_dim']} {rec['dtype']}"
    )
    if rec.get("causal"):
        s += " causal"
    params = rec.get("params") or {}
    return s + "".join(f" {k}={v}" for k, v in sorted(params.items()))


@dataclass(frozen=True)
class Run:
    """One results file: where it came from, its header and records."""

    path: str
    header: dict
    records: tuple[dict, ...]


@dataclass(frozen=True)
class Measured:
    """A case on one side, merged over that side's runs."""

    key: str
    record: dict  # the first run's record (identity, status, reason)
    status: str
    reason: str | None
    groups: tuple[tuple[float, ...], ...]  # normalised samples, one tuple per run
    median_ms: (
        float | None
    )  # median of every run's raw samples pooled (for display; the ratio's own median before --normalize)
    peak_mem: int | None  # median of the runs' peaks
    runs: int

    @property
    def samples(self) -> tuple[float, ...]:
        return tuple(x for g in self.groups for x in g)


@dataclass(frozen=True)
class Side:
    paths: tuple[str, ...]
    env: dict  # the first run's env
    cases: dict[str, Measured] = field(default_factory=dict)
    reference_key: str | None = None  # the --normalize CASE reference


def load_run(path: str | Path) -> Run:
    """Read a results file strictly: ResultsError on a missing, empty, header-only, corrupt or truncated
    file (results.read forgives a cut last line, an interrupted run; a gate must not)."""
    from attnbench.core.results import ResultsError, read

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        header, records = read(path)
    for w in caught:
        if "truncated" in str(w.message):
            raise ResultsError(
                f"'{path}' is truncated (its last line is cut: an interrupted run); "
                "run it again (attnbench baseline save writes baselines atomically)"
            )
    if not records:
        raise ResultsError(
            f"'{path}' has a header but no records (a run that ended before its first case); "
            "there is nothing to compare: run it again"
        )
    return Run(str(path), header, tuple(records))


def parse_case_spec(spec: str) -> tuple[str, str, dict]:
    """'mha:sdpa:seq=1024:dtype=float32' -> ('mha', 'sdpa', {'seq': 1024, 'dtype': 'float32'})."""
    parts = [p for chunk in spec.split(":") for p in chunk.split(",") if p.strip()]
    if len(parts) < 2 or "=" in parts[0] or "=" in parts[1]:
        raise UsageError(
            f"bad --normalize case '{spec}'; accepted: none, gemm or VARIANT:BACKEND[:key=value...], "
            "e.g. mha:sdpa:seq=1024"
        )
    want: dict = {}
    for p in parts[2:]:
        k, eq, v = p.partition("=")
        k = k.strip()
        if not eq or k not in set(ID_FIELDS) | {"seq"}:
            raise UsageError(
                f"bad key '{p}' in --normalize case '{spec}'; accepted keys: seq, "
                f"{', '.join(f for f in ID_FIELDS if f not in ('variant', 'backend'))}"
            )
        v = v.strip()
        if k in _INT_KEYS:
            from attnbench.run.plan import parse_length

            want[k] = parse_length(v, f"--normalize {k}")
        elif k == "causal":
            want[k] = v.lower() in ("1", "true", "yes")
        else:
            want[k] = v
    return parts[0].strip(), parts[1].strip(), want


def _matches(rec: dict, variant: str, backend: str, want: dict) -> bool:
    if rec["variant"] != variant or rec["backend"] != backend:
        return False
    for k, v in want.items():
        got = (rec["seq_k"] if rec["mode"] == "decode" else rec["seq_q"]) if k == "seq" else rec.get(k)
        if got != v:
            return False
    return True


def find_reference(run: Run, spec: str) -> dict:
    variant, backend, want = parse_case_spec(spec)
    hits = [r for r in run.records if _matches(r, variant, backend, want)]
    if not hits:
        raise UsageError(
            f"--normalize {spec}: no such case in {run.path}; the reference case must be measured in every run compared"
        )
    if len({case_key(r) for r in hits}) > 1:
        raise UsageError(
            f"--normalize {spec} matches {len(hits)} cases in {run.path}; add keys "
            f"(e.g. :mode=fwd:dtype=float32) until one is left: {case_label(hits[0])}, {case_label(hits[1])}"
        )
    ref = hits[0]
    if ref["status"] != "ok" or not (ref.get("latency_ms") or {}).get("median"):
        raise UsageError(f"--normalize {spec}: the reference case has status {ref['status']} in {run.path}")
    return ref


def divisor(run: Run, rec: dict, normalize: str, reference: dict | None) -> float:
    """What this run's samples of `rec` are divided by."""
    if normalize == "none":
        return 1.0
    if normalize == "gemm":
        gemm = ((run.header.get("refs") or {}).get("gemm") or {}).get(rec["dtype"])
        if not gemm or not gemm.get("median_ms"):
            raise UsageError(
                f"--normalize gemm: {run.path} has no in-run GEMM reference for {rec['dtype']} "
                "(header refs.gemm); use --normalize none or a reference case"
            )
        # per n³: older files timed a 2048² GEMM on the CPU, newer ones 1024²; the rate per n³ compares both
        return float(gemm["median_ms"]) / float(gemm.get("n") or 1) ** 3 * 1e9
    return float(reference["latency_ms"]["median"])


def split_runs(run: Run) -> list[Run]:
    """A file holding several runs of a suite (a baseline saved with --runs N) as its runs:
    the k-th record of a case belongs to run k. (They share the file's header, so its in-run
    GEMM reference is the first run's.)"""
    seen: dict[str, int] = {}
    parts: list[list[dict]] = []
    for rec in run.records:
        k = case_key(rec)
        i = seen[k] = seen.get(k, -1) + 1
        if i == len(parts):
            parts.append([])
        parts[i].append(rec)
    if len(parts) <= 1:
        return [run]
    return [Run(run.path if i == 0 else f"{run.path}#{i + 1}", run.header, tuple(p)) for i, p in enumerate(parts)]


def build_side(runs: list[Run], normalize: str = "none") -> Side:
    """Merge runs (of one environment) into one side, normalising each run on its own."""
    paths = tuple(r.path for r in runs)
    runs = [part for r in runs for part in split_runs(r)]
    per_key: dict[str, list[tuple[Run, dict, dict | None]]] = {}
    ref_key = None
    for run in runs[1:]:
        diff = env_differences(runs[0].header.get("env") or {}, run.header.get("env") or {})
        if diff:
            raise UsageError(
                f"cannot merge {runs[0].path} and {run.path}: environments differ in {describe_differences(diff)}"
            )
    for run in runs:
        reference = None
        if normalize not in ("none", "gemm"):
            reference = find_reference(run, normalize)
            ref_key = case_key(reference)
        for rec in run.records:
            per_key.setdefault(case_key(rec), []).append((run, rec, reference))
    cases = {k: _merge(k, hits, normalize) for k, hits in per_key.items()}
    return Side(paths, dict(runs[0].header.get("env") or {}), cases, ref_key)


def _merge(key: str, hits: list, normalize: str) -> Measured:
    first = hits[0][1]
    bad = [rec for _, rec, _ in hits if rec["status"] != "ok"]
    if bad:
        return Measured(key, first, bad[0]["status"], bad[0].get("reason"), (), None, None, len(hits))
    wrong = [(rec, why) for _, rec, _ in hits for why in [why_wrong(rec)] if why]
    if wrong:  # a wrong output is never compared for speed (core/correctness.py); its median is kept for the record
        rec, why = wrong[0]
        return Measured(key, rec, "wrong", why, (), (rec.get("latency_ms") or {}).get("median"), None, len(hits))
    groups = []
    peaks = []
    raw = []
    for run, rec, reference in hits:
        d = divisor(run, rec, normalize, reference)
        raw.extend(float(s) for s in (rec.get("samples_ms") or []))
        groups.append(tuple(float(s) / d for s in (rec.get("samples_ms") or [])))
        if rec.get("peak_mem_bytes") is not None:
            peaks.append(int(rec["peak_mem_bytes"]))
    median_ms = statistics.median(raw) if raw else (first.get("latency_ms") or {}).get("median")
    peak = int(statistics.median(peaks)) if peaks else None
    return Measured(key, first, "ok", None, tuple(g for g in groups if g), median_ms, peak, len(hits))


def env_differences(base_env: dict, cur_env: dict) -> dict[str, tuple]:
    """Fingerprint fields that differ: {field: (baseline, current)}."""
    b, c = fingerprint(base_env), fingerprint(cur_env)
    return {k: (b[k], c[k]) for k in FINGERPRINT_FIELDS if b[k] != c[k]}


def describe_differences(diff: dict[str, tuple]) -> str:
    return ", ".join(f"{k} ({b!r} vs {c!r})" for k, (b, c) in diff.items())
