"""`attnbench list`: every variant and its backends here, or the model presets (the module is
list_cmd: one named `list` would shadow the builtin in the package that imports it)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from attnbench.cli import options as O


def list_variants(
    fmt: O.Format = None,
    json_out: O.Json = False,
    device: O.Device = "auto",
    models: Annotated[bool, typer.Option("--models", help="List the model presets of `run --model` instead.")] = False,
) -> None:
    """Every variant: family, description, complexity, backends and their availability here.

    A backend not available here is marked ✗ with the reason (a reason many share is given once,
    below the table).

    Examples:

      attnbench list

      attnbench list --device cpu

      attnbench list --json | jq '.[] | select(.family == "sparse") | .name'
    """
    fmt = O.output_format(fmt, json_out)
    console = Console(width=None if sys.stdout.isatty() else 200)
    if models:
        from attnbench.report.formodel import list_models

        list_models(console, fmt == "json")
        return

    from rich.markup import escape

    from attnbench.cli.reasons import unavailable_reasons
    from attnbench.cli.tables import list_rows, variants_table
    from attnbench.run.session import resolve_device

    rows = list_rows(resolve_device(device))
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    else:
        why = unavailable_reasons(rows)
        console.print(variants_table(rows, why.inline))
        for note in why.notes:
            console.print(f"[dim]{escape(note)}[/]", highlight=False)
