"""`attnbench report`: Markdown + HTML + charts + CSV from results files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from attnbench.cli import options as O
from attnbench.core.errors import UsageError, say


def report(out: O.Out = None,
           results: Annotated[Optional[list[Path]], typer.Argument(
               metavar="RESULTS...",
               help="Results files (.jsonl) written by `attnbench run`, oldest first.", show_default=False)] = None,
           relative_to: O.RelativeTo = None,
           history: Annotated[Optional[Path], typer.Option(
               metavar="DIR",
               help="A directory of results files (e.g. one per CI run): every .jsonl in it, oldest "
                    "first by its header, is drawn as per-case trend lines.")] = None,
           patterns: Annotated[bool, typer.Option(
               "--patterns", help="Add the pattern gallery: what each sparse/positional/vision variant "
                                  "attends (draws the masks with torch).")] = False) -> None:
    """Write report.md, a self-contained report.html, charts (PNG, SVG) and tables (CSV).

    --out: the report's folder (created; required).

    With two or more files (or --history DIR) the report adds per-case trend lines across the
    runs; every other section shows each case's latest run.

    Examples:

      attnbench report results/run.jsonl --out reports/run

      attnbench report base.jsonl cur.jsonl --out reports/ab --relative-to mha:sdpa

      attnbench report --history ci-results/ --out reports/trend
    """
    from attnbench.gate.recommend import for_report
    from attnbench.report.build import build_report

    if out is None:
        raise UsageError("report needs --out DIR: the folder it writes report.md, report.html and charts to")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file; give a folder (created if missing)")
    written = build_report(results or [], out, relative_to, history, patterns, recommender=for_report)
    say(Console(stderr=True), f"wrote {len(written)} files; open {out / 'report.html'}")
