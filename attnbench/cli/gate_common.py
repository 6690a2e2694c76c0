"""What the gate's commands (compare, gate, baseline, ab) share: their options, their exit codes
and how a report is printed and written.

Exit codes (all four commands): 0 no regression, 1 at least one confirmed regression, 2 a
benchmark case failed in the current run, 3 a usage error, a missing or unreadable baseline, or
environments that differ. Usage problems exit 3 here (not attnbench's usual 2), so a CI job can
tell "the benchmarks broke" from "the gate was called wrong". See docs/ci.md.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from attnbench.cli import options as O
from attnbench.core.errors import UsageError, say
from attnbench.core.results import ResultsError, atomic_write_text
from attnbench.core.safe_io import OutputError
from attnbench.gate.compare import EXIT_ERRORS, EXIT_USAGE, FORMATS, Options, Report, make_options

err = Console(stderr=True)

Threshold = Annotated[str, typer.Option("--threshold", metavar="PCT",
                                        help="Regression threshold on the median ratio, e.g. 10% or 0.10.")]
Warn = Annotated[str, typer.Option("--warn", metavar="PCT", help="Changes within ±warn count as 'same'.")]
Metric = Annotated[str, typer.Option("--metric", metavar="METRIC",
                                     help="What decides the exit code: latency | memory | both (the other is shown).")]
Normalize = Annotated[str, typer.Option("--normalize", metavar="HOW",
                                        help="none | gemm (in-run GEMM time) | a case, e.g. mha:sdpa:seq=1024.")]
Reports = Annotated[Optional[list[Path]], typer.Option(
    "--report", metavar="FILE",
    help="Also write the report to FILE; format by suffix: .md .xml (JUnit) .json .txt (repeatable).")]
Alpha = Annotated[float, typer.Option("--alpha", metavar="NUM", help="Significance level of the Mann–Whitney test.")]
MemThreshold = Annotated[
    str, typer.Option("--mem-threshold", metavar="PCT", help="Peak-memory regression threshold (and at least 1 MiB).")
]
GateSuite = Annotated[str, typer.Option(
    "--suite", metavar="NAME|FILE", rich_help_panel=O.WHAT,
    help="A suite: a name (quick, ci, ...) or a .toml path; its axes and settings, options given win.")]


@contextlib.contextmanager
def usage_exit_3():
    """Usage problems and unreadable results exit 3 with one line on stderr."""
    try:
        yield
    except (UsageError, ResultsError, OutputError) as e:
        say(err, str(e), "error:")
        raise typer.Exit(EXIT_USAGE) from None


def options(threshold, warn, metric, normalize, alpha, mem_threshold, allow_env_mismatch, fmt, json_out, reports,
            force) -> tuple[Options, str]:
    """The comparison options and the stdout format, checked before any work."""
    from attnbench.gate.render import SUFFIX_FORMATS

    fmt = O.output_format(fmt, json_out, FORMATS)
    for p in reports or []:
        if p.suffix not in SUFFIX_FORMATS:
            raise UsageError(f"cannot tell the format of --report '{p}'; accepted suffixes: "
                             f"{', '.join(SUFFIX_FORMATS)}")
        if not p.parent.is_dir():
            raise UsageError(f"cannot write --report '{p}': directory '{p.parent}' does not exist")
        if p.is_dir():
            raise UsageError(f"--report '{p}' is a directory; give a file such as {p}/gate.md")
        if p.is_file() and not force:
            raise UsageError(f"'{p}' already exists; add --force to overwrite it")
    return make_options(threshold, warn, metric, normalize, alpha, mem_threshold, allow_env_mismatch), fmt


def emit(report: Report, fmt: str, reports: list[Path] | None) -> None:
    """Print the report, write the --report files, then exit with the report's code."""
    from attnbench.gate.render import RENDERERS, SUFFIX_FORMATS, headline

    sys.stdout.write(RENDERERS[fmt](report))
    sys.stdout.flush()
    for p in reports or []:
        atomic_write_text(p, RENDERERS[SUFFIX_FORMATS[p.suffix]](report))
    if report.incomparable:
        say(err, headline(report).partition(": ")[2], "error:")
    raise typer.Exit(report.exit_code)


def guard_run(fn):
    """Run benchmarks: usage problems found late exit 3, a failed run 2, Ctrl-C 130."""
    from attnbench.gate.ab import RunFailed

    with usage_exit_3():
        try:
            return fn()
        except RunFailed as e:
            say(err, str(e), "error:")
            raise typer.Exit(EXIT_ERRORS) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
