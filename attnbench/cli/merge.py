"""`attnbench merge`: join the results files of shards or nodes under one header."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from attnbench.cli import options as O
from attnbench.core.errors import UsageError, say


def merge(
    files: Annotated[list[Path], typer.Argument(metavar="FILES...", help="Results files (JSONL) to merge, in order.")],
    out: O.Out = None,
    allow_env_mismatch: O.AllowEnvMismatch = False,
    force: O.Force = False,
) -> None:
    """Merge results files (shards of one sweep, or nodes of a cluster) under one header.

    --out: the merged results file (required; written atomically). Environments must match
    unless --allow-env-mismatch; a case_id present twice is kept once (the first) and counted.

    Examples:

      attnbench merge results/shard-*.jsonl --out results/all.jsonl

      attnbench merge a.jsonl b.jsonl --out ab.jsonl --allow-env-mismatch
    """
    from attnbench.core.merge import merge as merge_files

    if out is None:
        raise UsageError("merge needs --out FILE: the merged results file")
    if out.is_dir():
        raise UsageError(f"--out '{out}' is a directory; give a file such as {out}/merged.jsonl")
    if out.is_file() and not force:
        raise UsageError(f"'{out}' already exists; add --force to overwrite it")
    if not out.parent.exists():
        raise UsageError(f"cannot write '{out}': directory '{out.parent}' does not exist")
    summary = merge_files(files, out, allow_mixed_env=allow_env_mismatch, command=["attnbench", *sys.argv[1:]])
    dup = f", {summary['duplicates']} duplicate case_ids dropped" if summary["duplicates"] else ""
    say(Console(stderr=True), f"merged {summary['files']} files: {summary['records']} records → {out}{dup}")
