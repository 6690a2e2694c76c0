"""What `attnbench run` prints at the end (table, JSON or CSV; the CSV file; quiet: the path) and
with --dry-run (the plan, as text or JSON). The options are checked before anything runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console

from attnbench.core.errors import UsageError

FORMATS = ("table", "json", "csv")


def check_output(fmt: str | None, json_out: bool, csv_out: Path | None, columns: str | None, quiet: bool,
                 verbose: bool, force: bool = False) -> tuple[str, list[str] | None]:
    """(format, columns) from run's output options; one line saying what is accepted when wrong.
    An existing --csv file is replaced only with --force."""
    from attnbench.cli.options import output_format
    from attnbench.cli.tables import parse_columns

    fmt = output_format(fmt, json_out, FORMATS)
    if quiet and verbose:
        raise UsageError("--quiet and --verbose exclude each other; give one of them")
    if csv_out is not None:
        if csv_out.is_dir():
            raise UsageError(f"--csv '{csv_out}' is a directory; give a file path such as {csv_out}/run.csv")
        if not csv_out.parent.exists():
            raise UsageError(f"cannot write --csv '{csv_out}': directory '{csv_out.parent}' does not exist")
        if csv_out.exists() and not force:
            raise UsageError(f"'{csv_out}' already exists; add --force to overwrite it")
    return fmt, parse_columns(columns)


def print_dry_run(plan, refs_s: float, fmt: str, console: Console, verbose: bool,
                  models: list[dict] | None = None, trace=None) -> None:
    """The plan on stdout: JSON (--json / --format json) or the text `run` prints before measuring;
    `models` (run --model: run/models.plan_entries) adds the models' layer groups and KV cache;
    `trace` (run --definition: run/trace_plan.TracePlan) adds each case's definition and workload."""
    if fmt == "json":
        doc = plan.as_json() | ({"models": models} if models else {})
        if trace is not None:
            doc["cases"] = [trace.annotate(c) for c in doc["cases"]]
        print(json.dumps(doc, default=str))
        return
    if fmt == "csv":
        raise UsageError("--dry-run prints the plan as text or JSON; accepted with it: --format table or json")
    from attnbench.cli.plan_view import print_plan

    print_plan(plan, console, verbose, startup_s=refs_s)
    if models:
        from attnbench.report.formodel import plan_models_table

        console.print(plan_models_table(models))


def print_results(records: list[dict], out: Path, device: str, *, fmt: str, columns: list[str] | None,
                  csv_out: Path | None, quiet: bool, console: Console) -> None:
    """The run's output: the CSV file if asked, then stdout's table / JSON / CSV (quiet: the path)."""
    from attnbench.cli.tables import csv_text

    if csv_out is not None and records:
        from attnbench.core.results import atomic_write_text

        atomic_write_text(csv_out, csv_text(records))
    if quiet:
        if out.exists():
            print(out, flush=True)
        return
    if fmt in ("json", "csv"):
        if fmt == "json":
            print(json.dumps(records, default=str))
        else:
            print(csv_text(records), end="")
        from attnbench.measure.contention import advice

        if busy := advice(records):  # the table prints it among its footnotes; here stdout is data only
            print(busy, file=sys.stderr)
    else:
        print_table(records, f"attnbench on {device} → {out}", columns, console)
    if csv_out is not None and records:
        console.print(f"CSV: {csv_out}", markup=False, highlight=False)


def print_table(records: list[dict], title: str, columns: list[str] | None, console: Console) -> None:
    """The results table, its footnotes, and the scaling table against a baseline that ran."""
    from attnbench.cli.tables import results_footnotes, results_table, run_baseline
    from attnbench.core.correctness import left_out_lines, split
    from attnbench.report.catalogue import annotate
    from attnbench.report.terminal import print_scaling
    from attnbench.variants.registry import describe

    console.print(results_table(records, title=title, columns=columns))
    for note in results_footnotes(records):
        console.print(f"[dim]{escape(note)}[/]", highlight=False)
    kept, wrong = split(annotate({"catalogue": describe(r["variant"] for r in records)}, records))
    print_scaling(kept, console, baseline=run_baseline(kept))
    for line in left_out_lines(wrong, "the scaling verdicts and speedups"):
        console.print(f"[bold red]{escape(line)}[/]", highlight=False)
    if any(r.get("layers") for r in records):  # run --model / --layers: the KV cache of the model's layers
        from attnbench.report.formodel import kv_table

        console.print(kv_table(records))


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)
