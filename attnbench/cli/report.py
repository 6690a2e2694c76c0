"""Commands that read results: `report` (Markdown + HTML + charts + CSV), `show` (tables in the
terminal) and `show-pattern` (one variant's attention pattern)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from attnbench.core.errors import UsageError, say

Results = Annotated[list[Path], typer.Argument(help="Results files (.jsonl) written by `attnbench run`.",
                                               show_default=False)]
Baseline = Annotated[Optional[str], typer.Option(
    help="VARIANT:BACKEND for speedups and crossovers (default mha:eager).")]


def register(app: typer.Typer) -> None:
    @app.command()
    def report(out: Annotated[Path, typer.Option(help="Output directory (created).")],
               results: Annotated[Optional[list[Path]], typer.Argument(
                   help="Results files (.jsonl) written by `attnbench run`, oldest first.", show_default=False)] = None,
               baseline: Baseline = None,
               history: Annotated[Optional[Path], typer.Option(
                   help="A directory of results files (e.g. one per CI run): every .jsonl in it, oldest "
                        "first by its header, is drawn as per-case trend lines.")] = None,
               patterns: Annotated[bool, typer.Option(
                   "--patterns", help="Add the pattern gallery: what each sparse/positional/vision variant "
                                      "attends (draws the masks with torch).")] = False) -> None:
        """Write report.md, a self-contained report.html, charts (PNG, SVG) and tables (CSV).

        With two or more files (or --history DIR) the report adds per-case trend lines across the
        runs; every other section shows each case's latest run.

        Examples:

          attnbench report results/run.jsonl --out reports/run

          attnbench report base.jsonl cur.jsonl --out reports/ab --baseline mha:sdpa

          attnbench report --history ci-results/ --out reports/trend
        """
        from attnbench.report.build import build_report

        written = build_report(results or [], out, baseline, history, patterns)
        say(Console(stderr=True), f"wrote {len(written)} files; open {out / 'report.html'}")

    @app.command()
    def show(results: Results, baseline: Baseline = None,
             json_out: Annotated[bool, typer.Option("--json", help="Print the scaling verdicts as JSON: one row per "
                                                    "series and metric (series, shape, metric, exponent, ci_low, "
                                                    "ci_high, lengths, claim, verdict).")] = False) -> None:
        """Print the report's tables (scaling, measurements, crossovers) without writing files.

        Examples:

          attnbench show results/run.jsonl

          attnbench show results/run.jsonl --json

          attnbench show a.jsonl b.jsonl --baseline flash:sdpa-flash
        """
        from attnbench.report.build import check_baseline, load
        from attnbench.report.terminal import show as show_tables

        _, records = load(results)
        base, note = check_baseline(records, baseline)
        if json_out:
            import json

            from attnbench.report.analysis import json_rows, scaling_table

            print(json.dumps(json_rows(scaling_table(records, base)), indent=2, ensure_ascii=False))
            return
        console = Console()
        if note:
            console.print(note)
        show_tables(records, console, base)

    @app.command("show-pattern")
    def show_pattern(
        variant: Annotated[str, typer.Argument(help="A variant with a pattern picture (see `attnbench list`).")],
        seq: Annotated[int, typer.Option(help="Sequence length (a square number for vision variants).")] = 256,
        out: Annotated[Optional[Path], typer.Option(
            help="Write a PNG (and an SVG beside it) instead of printing.")] = None,
        param: Annotated[Optional[list[str]], typer.Option(
            "--param", help="Variant parameter name=value (repeatable), e.g. --param sinks=4.")] = None,
    ) -> None:
        """Render what one variant attends: a mask in two colours, or a bias with a colour map.

        Examples:

          attnbench show-pattern sliding_window --seq 64

          attnbench show-pattern sliding_window --seq 64 --param window=8 --param sinks=4

          attnbench show-pattern alibi --seq 256 --out alibi.png
        """
        from attnbench.report.gallery import picture, render, text_picture
        from attnbench.run.plan import check_params, parse_param_items

        t, p = picture(variant, seq, check_params(parse_param_items(param), (variant,)) if param else None)
        if out is None:
            console = Console()
            console.print(text_picture(t, color=console.color_system is not None))
            return
        if out.suffix.lower() != ".png":
            raise UsageError(f"--out '{out}' must end in .png")
        if not out.parent.exists():
            raise UsageError(f"cannot write '{out}': directory '{out.parent}' does not exist")
        extra = ", ".join(f"{k}={v}" for k, v in p.params)
        render(t, f"{variant} at L={seq}" + (f"\n{extra}" if extra else ""), out.parent, out.stem)
        say(Console(stderr=True), f"wrote {out} and {out.with_suffix('.svg')}")
