"""`attnbench recommend`: which backend to use per shape, length and mode, with the evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from attnbench.cli import options as O
from attnbench.core.errors import UsageError

FORMATS = ("table", "markdown", "json")


def recommend(
    results: Annotated[list[Path], typer.Argument(help="Results files (.jsonl) written by `attnbench run`.",
                                                  show_default=False)],
    max_error: Annotated[Optional[float], typer.Option(
        "--max-error", help="Largest relative L2 error accepted (default: exact within the dtype's "
                            "tolerance, 4·(u_dtype + u_fp32·√Lk): float32 2.2e-5 at 8k, float16 2.0e-3, "
                            "bfloat16 1.6e-2). A wrong output (beyond its own oracle's budget, see `attnbench show`) "
                            "is never accepted, whatever this allows: it loosens an approximation's distance from "
                            "exact attention, not correctness.")
    ] = None,
    memory_budget: O.MemoryBudget = None,
    fmt: O.Format = None,
    json_out: O.Json = False,
    rank_by: Annotated[str, typer.Option(
        "--rank-by", metavar="QUANTITY",
        help="What the pick is ranked by: latency (median per call) | energy (joules per call, from the "
             "records' `energy`; cases without it do not qualify).")] = "latency",
) -> None:
    """Per shape, length and mode: the fastest backend within the error and memory budgets, the
    runner-up, the margin (runner-up ÷ best, 95 % bootstrap interval; a tie when it includes 1)
    and the lengths where the choice changes.

    --memory-budget: the largest peak memory accepted; also the budget of the 'how long a
    context fits' lines (default there: 80GiB). --format: table | markdown | json (a list of
    objects: shape, seq, mode, backend, runner_up, margin, margin_ci, tie).

    Examples:

      attnbench recommend results/llama.jsonl

      attnbench recommend r.jsonl --max-error 1e-2 --memory-budget 24GiB --format json

      attnbench recommend gpu.jsonl --rank-by energy
    """
    from attnbench.gate.recommend import METRICS, recommend_files
    from attnbench.report import formodel as F

    fmt = O.output_format(fmt, json_out, FORMATS)
    if rank_by not in METRICS:
        raise UsageError(f"unknown --rank-by '{rank_by}'; accepted: {', '.join(METRICS)}")
    if max_error is not None and not max_error >= 0:
        raise UsageError(f"--max-error must be a number >= 0 (got {max_error})")
    budget = O.parse_size(memory_budget) if memory_budget is not None else None
    picks, cross, records = recommend_files(results, max_error, budget, rank_by)
    if fmt == "json":
        print(json.dumps([p.as_json() for p in picks], indent=2))
        return
    context = F.context_lines(records, budget or F.DEFAULT_BUDGET)
    if fmt == "markdown":
        print(F.markdown(picks, cross, context), end="")
        return
    console = Console(width=None if console_is_tty() else 200)
    what = "least energy per call" if rank_by == "energy" else "fastest"
    console.print(F.rich_table(f"recommended backend ({what} within the budgets)", F.COLUMNS, F.rows(picks)))
    for line in [F.crossover_text(c) for c in cross] + context:
        console.print(line, markup=False, highlight=False)


def console_is_tty() -> bool:
    import sys

    return sys.stdout.isatty()
