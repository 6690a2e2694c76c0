"""`attnbench ab`: a git revision against the working tree, interleaved rounds of a suite, then
compare (exit codes: cli/gate_common.py, docs/ci.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from attnbench.cli import gate_common as G
from attnbench.cli import options as O
from attnbench.core.errors import UsageError


def ab(
    ref: Annotated[str, typer.Option("--ref", metavar="REV",
                                     help="The git revision to compare the working tree with (baseline side).")],
    suite: G.GateSuite = "ci",
    backend_file: O.BackendFile = None,
    rounds: O.Rounds = None,
    threshold: G.Threshold = "10%",
    warn: G.Warn = "5%",
    metric: G.Metric = "latency",
    normalize: G.Normalize = "none",
    fmt: O.Format = None,
    json_out: O.Json = False,
    report: G.Reports = None,
    force: O.Force = False,
    alpha: G.Alpha = 0.002,
    mem_threshold: G.MemThreshold = "5%",
    device: O.Device = "auto",
    threads: O.Threads = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the per-round order.")] = 0,
    confirm_rounds: Annotated[Optional[int], typer.Option(
        "--confirm-rounds", metavar="N",
        help="Extra rounds of the regressions only, to confirm them (default: --rounds; 0: none).")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(
        "--runs-dir", metavar="DIR", help="Keep each round's results here (default: a temporary directory).")] = None,
) -> None:
    """Same-job A/B: a git revision against the working tree, interleaved rounds, then compare;
    regressions get extra interleaved rounds and must show again to fail.

    --rounds: interleaved rounds, each running the suite once on both sides (default 3).
    --format: table | markdown | json | junit.

    Examples:

      attnbench ab --ref origin/main --suite ci

      attnbench ab --ref HEAD~1 --rounds 5 --format markdown --report ab.xml

      attnbench ab --ref HEAD~1 --backend-file kernels/mine.py  (your kernel: REV's file against yours)
    """
    from attnbench.gate.flow import ab_flow

    rounds = 3 if rounds is None else rounds
    with G.usage_exit_3():
        o, fmt = G.options(threshold, warn, metric, normalize, alpha, mem_threshold, False, fmt, json_out, report,
                           force)
        if rounds < 1:
            raise UsageError(f"--rounds must be at least 1 (got {rounds})")
        if threads is not None and threads < 1:
            raise UsageError(f"--threads must be at least 1 (got {threads})")
        if confirm_rounds is not None and confirm_rounds < 0:
            raise UsageError(f"--confirm-rounds must be 0 or more (got {confirm_rounds})")
    report_ = G.guard_run(lambda: ab_flow(ref, suite, rounds, device, threads, runs_dir, seed, o, G.err,
                                          confirm_rounds, tuple(backend_file or ())))
    G.emit(report_, fmt, report)
