"""Commands for runs spread over machines: merge the results files of shards or nodes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .errors import UsageError

err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    @app.command()
    def merge(
        files: Annotated[list[Path], typer.Argument(help="Results files (JSONL) to merge, in order.")],
        out: Annotated[Path, typer.Option(help="The merged results file (written atomically).")],
        allow_mixed_env: Annotated[bool, typer.Option("--allow-mixed-env", help="Merge files measured on "
                                                      "different environments (device, torch, threads...).")] = False,
        force: Annotated[bool, typer.Option(help="Overwrite an existing --out.")] = False,
    ) -> None:
        """Merge results files (shards of one sweep, or nodes of a cluster) under one header.

        Environments must match unless --allow-mixed-env; a case_id present twice is kept once
        (the first) and counted.

        Examples:

          attnbench merge results/shard-*.jsonl --out results/all.jsonl

          attnbench merge a.jsonl b.jsonl --out ab.jsonl --allow-mixed-env
        """
        from .executors import merge as merge_files

        if out.exists() and not force:
            raise UsageError(f"'{out}' already exists; add --force to overwrite it")
        if not out.parent.exists():
            raise UsageError(f"cannot write '{out}': directory '{out.parent}' does not exist")
        summary = merge_files(files, out, allow_mixed_env=allow_mixed_env, command=["attnbench", *sys.argv[1:]])
        dup = f", {summary['duplicates']} duplicate case_ids dropped" if summary["duplicates"] else ""
        err_console.print(f"merged {summary['files']} files: {summary['records']} records → {out}{dup}",
                          highlight=False, soft_wrap=True)
