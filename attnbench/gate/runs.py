"""Suite runs for the gate: run a suite the way `attnbench run` does (run/session.py run_sweep,
with the suite's settings: run/settings.py), re-run
chosen cases, and save baselines named by the environment they were measured in.

A baseline's name is `<device>-<device name>-<hash>.jsonl`, the hash a short SHA-1 of the
environment fingerprint (device, device_name, torch, triton, cuda, threads): results of another
environment are not comparable, so each environment gets its own file, and `--baseline DIR`
picks the one of the current environment. A baseline holds several runs of the suite (default
3), so that it carries its own run-to-run spread; it is written to a temporary file beside the
target and renamed over it, so a killed run never leaves a half baseline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

from rich.console import Console

from attnbench.core.errors import UsageError
from attnbench.core.results import atomic_write_text, fingerprint
from attnbench.gate.sides import Run, load_run

BASELINE_DIR = Path("results") / "baselines"


def env_id(env: dict) -> str:
    """'cpu-amd-epyc-1a2b3c4d5e': a readable prefix and a hash of the fingerprint."""
    fp = fingerprint(env)
    digest = hashlib.sha1(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{fp['device']}-{fp['device_name'] or ''}".lower()).strip("-")[:40]
    return f"{slug}-{digest}"


def current_env(device: "torch.device") -> dict:  # noqa: F821  (torch loads only inside)
    from attnbench.measure.env import capture

    return capture(device)


def resolve_baseline(path: Path, env: dict) -> Path:
    """A file as given; a directory: the baseline of this environment inside it."""
    if not path.is_dir():
        return path
    want = path / f"{env_id(env)}.jsonl"
    if want.exists():
        return want
    have = sorted(p.name for p in path.glob("*.jsonl"))
    raise UsageError(f"no baseline for this environment in '{path}' (expected {want.name}; found: "
                     f"{', '.join(have) or 'none'}); create one with `attnbench baseline save`")


def load_suite_settings(suite: str, device: str, threads: int | None = None, backend_files=None):
    """The suite's sweeps and its run settings (the suite's own, then `device` unless auto and
    `threads`), built as `attnbench run --suite` builds them. Threads are part of the
    environment, so baseline and gate must use the same number. `backend_files`: user backend
    files (--backend-file), loaded before the suite names their backends (run/start.py)."""
    from attnbench.run.plan import load_suite
    from attnbench.run.settings import build
    from attnbench.run.start import load_backends

    build(None, None, threads=threads, device=device)  # the options' own mistakes first
    files = load_backends([str(f) for f in backend_files or ()])
    sweeps, meta = load_suite(suite)
    return sweeps, build(meta, suite, threads=threads, device=None if device == "auto" else device,
                         backend_files=files)


def resolve_settings(settings):
    """(settings with threads and device as the run will use them, the torch device)."""
    from attnbench.run.session import resolve_device, resolved

    dev = resolve_device(settings.device)
    return resolved(settings, dev), dev


def run_sweeps(sweeps, settings, out: Path, console: Console | None, command: list[str]) -> Run:
    """Run sweeps into `out` (overwritten) and read the file back."""
    from attnbench.run.session import run_sweep

    _, interrupted = run_sweep(sweeps, settings, out, force=True, console=console, command=command)
    if interrupted:
        raise KeyboardInterrupt
    return load_run(out)


def sweep_of(rec: dict):
    """A one-case sweep that expands back to exactly this record's case."""
    from attnbench.run.plan import make_sweep

    swept = rec["seq_k"] if rec["mode"] == "decode" else rec["seq_q"]
    return make_sweep(variants=[rec["variant"]], backends=[rec["backend"]], seq=[swept], kv_seq=[rec["seq_k"]],
                      batch=[rec["batch"]], heads=[rec["heads"]], kv_heads=[rec["kv_heads"]],
                      head_dim=[rec["head_dim"]], dtype=[rec["dtype"]], causal=[rec["causal"]],
                      modes=[rec["mode"]], params=dict(rec.get("params") or {}))


@contextlib.contextmanager
def _removing(paths: list[Path]):
    try:
        yield
    finally:
        for p in paths:
            p.unlink(missing_ok=True)


def save_baseline(sweeps, settings, out: Path, console: Console | None, command: list[str], runs: int = 3) -> Run:
    """Run the suite `runs` times and write one file: the first run's header, then every run's
    records (one record per case per run: the gate resamples them as runs, so the baseline
    carries its own run-to-run spread). Written to a temporary file beside `out`, then renamed."""
    from attnbench.core.safe_io import hold_lock

    out.parent.mkdir(parents=True, exist_ok=True)
    tmps = [out.with_name(f".{out.name}.run{i}.tmp{os.getpid()}") for i in range(runs)]
    with hold_lock(out), _removing(tmps):
        done = []
        for i, tmp in enumerate(tmps):
            if console is not None and runs > 1:
                console.print(f"baseline run {i + 1}/{runs}")
            done.append(run_sweeps(sweeps, settings, tmp, console, command))
        lines = [tmps[0].read_text(encoding="utf-8").splitlines()[0]]
        lines += [ln for t in tmps for ln in t.read_text(encoding="utf-8").splitlines()[1:] if ln.strip()]
        atomic_write_text(out, "\n".join(lines) + "\n")
    return Run(str(out), done[0].header, tuple(r for run in done for r in run.records))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in sorted(v.items())) + " }"
    return json.dumps(str(v))  # a TOML basic string


def suite_text(records: list[dict], meta: dict) -> str:
    """A suite (TOML) with one [[sweep]] per record, expanding back to exactly those cases;
    `meta` keeps the original suite's settings (run/settings.py SETTING_KEYS)."""
    from attnbench.run.settings import SETTING_KEYS

    lines = [f"{k} = {_toml_value(v)}" for k, v in meta.items() if k in SETTING_KEYS]
    for rec in records:
        sw = sweep_of(rec)
        lines += ["", "[[sweep]]"] + [f"{k} = {_toml_value(list(getattr(sw, k)))}" for k in
                                      ("variants", "backends", "seq", "kv_seq", "batch", "heads", "kv_heads",
                                       "head_dim", "dtype", "causal", "modes")]
        if sw.params:
            lines.append(f"params = {_toml_value(sw.params)}")
    return "\n".join(lines) + "\n"
