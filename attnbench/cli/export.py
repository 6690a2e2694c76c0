"""`attnbench export`: results files as another tool's format (FlashInfer Trace), read-only on the
results (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from attnbench.cli import options as O
from attnbench.core.errors import UsageError, say

FORMATS = ("flashinfer-trace",)

Results = Annotated[list[Path], typer.Argument(metavar="RESULTS...",
                                               help="Results files (.jsonl) written by `attnbench run`.",
                                               show_default=False)]


def export(results: Results, fmt: O.Format = None, out: O.Out = None, force: O.Force = False) -> None:
    """Write results as a FlashInfer TraceSet folder: definitions, workloads, solutions, traces.

    --format: flashinfer-trace (the only one, and the default). --out: the folder, written whole or
    not at all. Only cases run from a definition's workloads (`run --definition DEF.json --workloads
    W.jsonl`) are traces; a passed one needs its definition's reference timed (`--trust-reference`).
    Every record left out is counted under its reason. Field mapping: docs/flashinfer-trace-export.md.

    Examples:

      attnbench export results/gqa.jsonl --format flashinfer-trace --out trace-set

      attnbench export a.jsonl b.jsonl --out trace-set --force
    """
    from attnbench.core.results import read
    from attnbench.report import flashinfer_export as fx

    fmt = fmt or FORMATS[0]
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format '{fmt}' for export; accepted: {', '.join(FORMATS)}")
    if out is None:
        raise UsageError("export needs --out DIR: the folder the TraceSet is written to")
    out = out.absolute()
    fx.check_out(out, force)
    ex = fx.build([read(p) for p in results])
    err = Console(stderr=True)
    for note in ex.notes:
        say(err, note)
    for why, n in ex.skipped.most_common():
        say(err, f"left out {n} record{'s' * (n != 1)}: {why}")
    if not ex.traces:
        raise UsageError(f"nothing to export: none of the {sum(ex.skipped.values())} records can be a trace")
    fx.write(ex, out)
    refs = f", {ex.references} reference timings used for speedups" if ex.references else ""
    say(err, f"exported {ex.traces} traces of {len(ex.uuids)} workloads, {len(ex.solutions)} solutions, "
             f"{len(ex.definitions)} definitions{refs} → {out}")
