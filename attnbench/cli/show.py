"""`attnbench show`: the report's tables in the terminal, without writing files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from attnbench.cli import options as O

Results = Annotated[list[Path], typer.Argument(metavar="RESULTS...",
                                               help="Results files (.jsonl) written by `attnbench run`.",
                                               show_default=False)]


def show(results: Results, relative_to: O.RelativeTo = None, fmt: O.Format = None, json_out: O.Json = False,
         case: Annotated[Optional[str], typer.Option(
             "--case", metavar="CASE",
             help="Print records instead of the tables: a case's (its case_id or a prefix of it) or every case "
                  "of a VARIANT:BACKEND, each with its problem, status, latency, error and the command that "
                  "reruns it.")] = None,
         ) -> None:
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

      attnbench show results/run.jsonl --case mha:sdpa  (its cases, each with its `attnbench run` command)
    """
    from attnbench.core.correctness import split
    from attnbench.report.build import check_baseline, load
    from attnbench.report.terminal import show as show_tables

    fmt = O.output_format(fmt, json_out)
    _, records = load(results)
    if case is not None:
        _show_case(records, case, fmt)
        return
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


def _show_case(records: list[dict], case: str, fmt: str) -> None:
    """The records of a case (its case_id or a prefix) or of a variant:backend pair: the fields a
    reader looks for first, then `rerun:` with its repro (older records say they have none)."""
    import json

    from attnbench.core.errors import UsageError

    case = case.strip()
    picked = [r for r in records
              if (case and r["case_id"].startswith(case)) or f"{r['variant']}:{r['backend']}" == case]
    if not picked:
        pairs = sorted({f"{r['variant']}:{r['backend']}" for r in records})
        raise UsageError(f"--case '{case}': no record has that case_id (or prefix) or variant:backend; "
                         f"accepted: a case_id, or one of {', '.join(pairs[:8])}{' ...' if len(pairs) > 8 else ''}")
    if fmt == "json":
        print(json.dumps(picked, indent=2, ensure_ascii=False, allow_nan=False))
        return
    for r in picked:
        lat = r.get("latency_ms") or {}
        err = r.get("error") or {}
        params = " ".join(f"{k}={v}" for k, v in sorted((r.get("params") or {}).items()))
        lines = [
            f"case {r['case_id']}: {r['variant']}:{r['backend']} {r['mode']} {r['dtype']} on {r['device']}",
            f"  problem: B{r['batch']} H{r['heads']}/{r['kv_heads']} L{r['seq_q']}x{r['seq_k']} D{r['head_dim']}"
            f"{' causal' if r['causal'] else ''}{(' ' + params) if params else ''}",
            f"  status: {r['status']}" + (f" ({r['reason']})" if r.get("reason") else ""),
        ]
        if lat.get("median") is not None:
            lines.append(f"  latency: median {lat['median']:.4g} ms, n={lat.get('n')}")
        if err.get("rel_l2") is not None:
            lines.append(f"  error vs {err.get('vs', 'the reference')}: rel_l2 {err['rel_l2']:.2e}")
        lines.append(f"  rerun: {r['repro']}" if r.get("repro") else
                     "  rerun: not recorded (written before records carried `repro`)")
        print("\n".join(lines))
