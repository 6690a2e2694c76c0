"""Commands that read results: `report` (Markdown + HTML + charts + CSV), `show` (tables in the
terminal) and `show-pattern` (one variant's attention pattern)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from attnbench.core.errors import UsageError, say

Results = Annotated[list[Path], typer.Argument(metavar="RESULTS...",
                                               help="Results files (.jsonl) written by `attnbench run`.",
                                               show_default=False)]
Baseline = Annotated[Optional[str], typer.Option(
    metavar="VARIANT:BACKEND",
    help="VARIANT:BACKEND for speedups and crossovers (default mha:eager).")]


def register(app: typer.Typer) -> None:
    @app.command()
    def report(out: Annotated[Path, typer.Option(metavar="DIR", help="Output directory (created).")],
               results: Annotated[Optional[list[Path]], typer.Argument(
                   metavar="RESULTS...",
                   help="Results files (.jsonl) written by `attnbench run`, oldest first.", show_default=False)] = None,
               baseline: Baseline = None,
               history: Annotated[Optional[Path], typer.Option(
                   metavar="DIR",
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
        from attnbench.gate.recommend import for_report
        from attnbench.report.build import build_report

        written = build_report(results or [], out, baseline, history, patterns, recommender=for_report)
        say(Console(stderr=True), f"wrote {len(written)} files; open {out / 'report.html'}")

    @app.command()
    def show(results: Results, baseline: Baseline = None,
             json_out: Annotated[bool, typer.Option("--json", help="Print every table as one JSON object: baseline, "
                                                    "scaling (one row per series and metric: exponent, ci_low, "
                                                    "ci_high, claim, verdict...), measurements, crossovers, not_run "
                                                    "(fields: docs/reports.md).")] = False) -> None:
        """Print the report's tables (scaling, measurements, crossovers) without writing files.

        Examples:

          attnbench show results/run.jsonl

          attnbench show results/run.jsonl --json | jq '.scaling[] | select(.verdict == "differs")'

          attnbench show a.jsonl b.jsonl --baseline flash:sdpa-flash
        """
        from attnbench.report.build import check_baseline, load
        from attnbench.report.terminal import show as show_tables

        _, records = load(results)
        base, note = check_baseline(records, baseline)
        if json_out:
            import json

            from attnbench.report.json_view import show_document

            print(json.dumps(show_document(records, base, note), indent=2, ensure_ascii=False, allow_nan=False))
            return
        console = Console()
        if note:
            console.print(note)
        show_tables(records, console, base)

    @app.command("show-pattern")
    def show_pattern(
        variant: Annotated[str, typer.Argument(metavar="VARIANT",
                                               help="A variant with a pattern picture (see `attnbench list`).")],
        seq: Annotated[str, typer.Option(metavar="LEN", help="Sequence length: 512, 4k (k = 1024); a square "
                                                             "number for vision variants.")] = "256",
        out: Annotated[Optional[Path], typer.Option(
            metavar="FILE.png", help="Write a PNG (and an SVG beside it) instead of printing.")] = None,
        param: Annotated[Optional[list[str]], typer.Option(
            "--param", metavar="NAME=VALUE", help="Variant parameter (repeatable), e.g. --param sinks=4.")] = None,
    ) -> None:
        """Render what one variant attends: a mask in two colours, or a bias with a colour map.

        In the terminal the picture is scaled down to fit its width. A mask that attends more
        than 3/4 of the pairs at this length hides its pattern: a warning then suggests a length
        where it attends at most half.

        Examples:

          attnbench show-pattern bigbird --seq 4k

          attnbench show-pattern sliding_window --seq 64 --param window=8 --param sinks=4

          attnbench show-pattern alibi --seq 256 --out alibi.png

          NO_COLOR=1 attnbench show-pattern swin --seq 1024
        """
        from attnbench.report.gallery import picture, render, text_picture
        from attnbench.run.plan import check_params, parse_param_items

        length = _one_length(seq)
        if out is not None and out.suffix.lower() != ".png":
            raise UsageError(f"--out '{out}' must end in .png")
        if out is not None and not out.parent.exists():
            raise UsageError(f"cannot write '{out}': directory '{out.parent}' does not exist")
        t, p = picture(variant, length, check_params(parse_param_items(param), (variant,)) if param else None)
        _warn_if_dense(variant, length, t, p)
        if out is None:
            console = Console()
            colour = console.color_system is not None and not console.no_color  # NO_COLOR: shades
            console.print(text_picture(t, color=colour, width=console.width))
            return
        extra = ", ".join(f"{k}={v}" for k, v in p.params)
        render(t, f"{variant} at L={length}" + (f"\n{extra}" if extra else ""), out.parent, out.stem)
        say(Console(stderr=True), f"wrote {out} and {out.with_suffix('.svg')}")


def _one_length(seq: str) -> int:
    """One --seq length in the grammar of `run` (512, 4k, 1m)."""
    from attnbench.run.plan import parse_length

    if "," in seq or ".." in seq:
        raise UsageError(f"show-pattern draws one length: give one --seq (got '{seq}'), e.g. --seq 4k")
    return parse_length(seq)


def _warn_if_dense(variant: str, seq: int, t, p) -> None:
    """A warning on stderr when the mask attends so much at this length that its pattern hides."""
    from attnbench.core.units import fmt_len
    from attnbench.report.gallery import SHOWS, is_mask, sparse_length

    dense = float(t.mean()) if is_mask(t) else 0.0
    if dense <= SHOWS:
        return
    block = dict(p.params).get("block")
    blocks = f", {-(-seq // block)} blocks of {block}" if isinstance(block, int) and block > 0 else ""
    found = sparse_length(variant, seq)
    hint = (f"; try --seq {fmt_len(found[0])} ({100 * found[1]:.1f} % attended)" if found
            else "; it stays dense up to L=8k")
    say(Console(stderr=True), f"{variant} at L={seq} attends {100 * dense:.1f} % of the pairs{blocks}: too short "
                              f"for its pattern to show{hint}", "warning:", "bold yellow")
