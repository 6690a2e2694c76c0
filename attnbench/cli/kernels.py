"""`attnbench kernels ...`: commands about the Triton kernels that need no GPU.

  attnbench kernels compile --arch sm_80,sm_90 [--dtype float16,bfloat16] [--json]

compiles every kernel × autotune config × dtype for the named architectures ahead of time and
prints shared memory, registers and spills (attnbench.kernels.aot). Exit code 1 when a row
failed, spilled or exceeded shared memory; 2 for bad input.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from attnbench.cli import options as O

ARCHS = ("sm_80", "sm_90")
DTYPES = ("float16", "bfloat16", "float32")

app = typer.Typer(
    name="kernels",
    no_args_is_help=True,
    add_completion=False,
    help="The Triton kernels: ahead-of-time compile report (no GPU needed).",
)


@app.callback()
def _kernels() -> None:
    """The Triton kernels: ahead-of-time compile report (no GPU needed)."""


def _split(value: str, accepted: tuple[str, ...], what: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'); an unknown item prints one line on stderr and exits with code 2."""
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    for item in items or ("",):
        if item not in accepted:
            print(f"error: unknown {what} '{item}'; accepted: {', '.join(accepted)}", file=sys.stderr)
            raise typer.Exit(2)
    return items


def _table(rows: list[dict]) -> Table:
    table = Table(title="Triton ahead-of-time compile report")
    for name, justify in (
        ("kernel", "left"),
        ("arch", "left"),
        ("dtype", "left"),
        ("D", "right"),
        ("config", "left"),
        ("shared KiB", "right"),
        ("regs", "right"),
        ("spills B", "right"),
        ("status", "left"),
    ):
        table.add_column(name, justify=justify)
    for r in rows:
        shared = "-" if r["shared_bytes"] is None else f"{r['shared_bytes'] / 1024:.1f}"
        status = "[green]ok[/]" if r["ok"] else f"[red]FAIL[/] {r['reason']}"
        table.add_row(
            r["kernel"],
            r["arch"],
            r["dtype"],
            str(r["head_dim"]),
            r["config"],
            shared,
            str(r["registers"] if r["registers"] is not None else "-"),
            str(r["spills"] if r["spills"] is not None else "-"),
            status,
        )
    return table


@app.command("compile")
def compile_cmd(
    arch: Annotated[str, typer.Option("--arch", metavar="LIST",
                                      help="Comma-separated target architectures: sm_80, sm_90.")] = "sm_80,sm_90",
    dtype: O.Dtype = None,
    all_head_dims: Annotated[
        bool, typer.Option("--all-head-dims", help="Also compile at head dim 64 (slower).")
    ] = False,
    fmt: O.Format = None,
    json_out: O.Json = False,
) -> None:
    """Compile every kernel × autotune config × dtype ahead of time: shared memory, registers, spills.

    --dtype default: float16,bfloat16. --format json prints the rows as a JSON list.

    Examples:

      attnbench kernels compile

      attnbench kernels compile --arch sm_90 --dtype bfloat16

      attnbench kernels compile --arch sm_80 --all-head-dims --json > aot.json
    """
    fmt = O.output_format(fmt, json_out)
    archs, dtypes = _split(arch, ARCHS, "arch"), _split(dtype or "float16,bfloat16", DTYPES, "dtype")
    from attnbench.kernels import triton_unavailable_reason

    if triton_unavailable_reason() == "triton not installed":
        print("error: triton not installed", file=sys.stderr)
        raise typer.Exit(2)
    from attnbench.kernels.aot import run_compile_report_subprocess

    rows = run_compile_report_subprocess(archs, dtypes, all_head_dims=all_head_dims)
    if fmt == "json":
        print(json.dumps(rows, indent=1))
    else:
        Console(width=None if sys.stdout.isatty() else 200).print(_table(rows))
    if not all(r["ok"] for r in rows):
        raise typer.Exit(1)
