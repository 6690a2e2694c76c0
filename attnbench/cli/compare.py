"""`attnbench compare`: two results files case by case; exit 1 on a confirmed regression
(exit codes: cli/gate_common.py, docs/ci.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnbench.cli import gate_common as G
from attnbench.cli import options as O


def compare(
    baseline: Annotated[Path, typer.Argument(metavar="BASELINE", help="Baseline results (JSONL).")],
    current: Annotated[Path, typer.Argument(metavar="CURRENT", help="Current results (JSONL).")],
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
) -> None:
    """Compare two results files case by case; exit 1 on a confirmed regression.

    --format: table | markdown | json | junit.

    Examples:

      attnbench compare results/baselines/cpu-amd-epyc-1a2b3c4d5e.jsonl results/run.jsonl

      attnbench compare base.jsonl cur.jsonl --threshold 5% --normalize gemm --format markdown

      attnbench compare base.jsonl cur.jsonl --metric both --report gate.md --report gate.xml
    """
    from attnbench.gate.compare import check_common
    from attnbench.gate.compare import compare as run_compare
    from attnbench.gate.sides import build_side, load_run

    with G.usage_exit_3():
        o, fmt = G.options(threshold, warn, metric, normalize, alpha, mem_threshold, allow_env_mismatch, fmt,
                           json_out, report, force)
        base = build_side([load_run(baseline)], o.normalize)
        cur = build_side([load_run(current)], o.normalize)
        check_common(base, cur)
    G.emit(run_compare(base, cur, o), fmt, report)
