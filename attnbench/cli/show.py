"""`attnbench show`: the report's tables in the terminal, without writing files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from attnbench.cli import options as O

Results = Annotated[list[Path], typer.Argument(metavar="RESULTS...",
                                               help="Results files (.jsonl) written by `attnbench run`.",
                                               show_default=False)]


def show(results: Results, relative_to: O.RelativeTo = None, fmt: O.Format = None, json_out: O.Json = False) -> None:
    """Print the report's tables (scaling, measurements, crossovers) without writing files.

    A case whose output is wrong (beyond its dtype's error budget against its own oracle) enters
    no fit, speedup or crossover: it is listed last, with its median and the reason.

    --format json prints every table as one JSON object: baseline, scaling (one row per series
    and metric: exponent, ci_low, ci_high, claim, verdict...), measurements, crossovers, not_run,
    wrong (fields: docs/reports.md).

    Examples:

      attnbench show results/run.jsonl

      attnbench show results/run.jsonl --json | jq '.scaling[] | select(.verdict == "differs")'

      attnbench show a.jsonl b.jsonl --relative-to flash:sdpa-flash
    """
    from attnbench.core.correctness import split
    from attnbench.report.build import check_baseline, load
    from attnbench.report.terminal import show as show_tables

    fmt = O.output_format(fmt, json_out)
    _, records = load(results)
    records, wrong = split(records)  # a wrong output enters no fit, speedup or crossover
    base, note = check_baseline(records, relative_to)
    if fmt == "json":
        import json

        from attnbench.report.json_view import show_document

        print(json.dumps(show_document(records, base, note, wrong), indent=2, ensure_ascii=False, allow_nan=False))
        return
    console = Console()
    if note:
        console.print(note)
    show_tables(records, console, base, wrong)
