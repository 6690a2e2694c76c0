"""`attnbench gate`: run a suite, compare it with a baseline, re-run suspects; exit 1 on a
confirmed regression (exit codes: cli/gate_common.py, docs/ci.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnbench.cli import gate_common as G
from attnbench.cli import options as O
from attnbench.core.errors import UsageError


def gate(
    baseline: Annotated[Path, typer.Option("--baseline", metavar="FILE|DIR",
                                           help="Baseline results: a file, or a folder holding one per environment.")],
    suite: G.GateSuite = "ci",
    backend_file: O.BackendFile = None,
    threshold: G.Threshold = "10%",
    warn: G.Warn = "5%",
    metric: G.Metric = "latency",
    normalize: G.Normalize = "none",
    fmt: O.Format = None,
    json_out: O.Json = False,
    report: G.Reports = None,
    force: O.Force = False,
    alpha: G.Alpha = 0.002,
    allow_env_mismatch: O.AllowEnvMismatch = False,
    mem_threshold: G.MemThreshold = "5%",
    device: O.Device = "auto",
    threads: O.Threads = None,
    out: O.Out = None,
    rerun: Annotated[bool, typer.Option("--rerun/--no-rerun", help="Re-run suspect cases to confirm them.")] = True,
) -> None:
    """Run a suite, compare it with a baseline, re-run suspects, exit 1 on a confirmed regression.

    --out: the run's results file (default results/gate-<time>.jsonl). --format: table |
    markdown | json | junit.

    Examples:

      attnbench gate --suite ci --baseline results/baselines/

      attnbench gate --suite ci --baseline base.jsonl --format markdown --report gate.xml

      attnbench gate --suite my-kernel.toml --backend-file my_kernel.py --baseline results/baselines/
    """
    from attnbench.gate.flow import gate_flow

    with G.usage_exit_3():
        o, fmt = G.options(threshold, warn, metric, normalize, alpha, mem_threshold, allow_env_mismatch, fmt,
                           json_out, report, force)
        O.check_out(out, force)
        plan = _gate_plan(suite, device, threads, baseline, o, backend_file)
    G.emit(G.guard_run(lambda: gate_flow(*plan, o, out, rerun, G.err)), fmt, report)


def _gate_plan(suite: str, device: str, threads: int | None, baseline: Path, o, backend_files=None):
    """Load everything the gate needs before spending time on a run; fail fast (exit 3)."""
    from attnbench.gate.runs import current_env, load_suite_settings, resolve_baseline, resolve_settings
    from attnbench.gate.sides import build_side, describe_differences, env_differences, load_run

    sweeps, settings = load_suite_settings(suite, device, threads, backend_files)
    settings, dev = resolve_settings(settings)
    env = current_env(dev)
    base_run = load_run(resolve_baseline(baseline, env))
    diff = env_differences(base_run.header.get("env") or {}, env)
    if diff and not o.allow_env_mismatch:
        raise UsageError(
            f"the baseline {base_run.path} was measured in another environment: "
            f"{describe_differences(diff)}; save a baseline here or pass --allow-env-mismatch"
        )
    return build_side([base_run], o.normalize), sweeps, settings
