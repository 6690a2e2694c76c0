"""`attnbench check`: every available backend against the fp32 oracle at small shapes."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from attnbench.cli import options as O
from attnbench.core.errors import UsageError


def check(
    variants: O.Variants = None,
    backends: O.Backends = None,
    backend_file: O.BackendFile = None,
    dtype: O.Dtype = None,
    device: O.Device = "auto",
    fmt: O.Format = None,
    json_out: O.Json = False,
) -> None:
    """Check every available backend against the fp32 oracle at small shapes (pass/fail).

    --variants default: all; --dtype default: float32,float16. On a CPU-only machine the Triton
    kernels are run under TRITON_INTERPRET=1. Exit code 1 when a check fails.

    Examples:

      attnbench check --variants flash,gqa,bigbird

      attnbench check --backends sdpa,flex --dtype float32

      attnbench check --variants mha --backend-file my_kernel.py --backends my-attention  (your kernel)
    """
    from dataclasses import asdict

    from attnbench.core.errors import did_you_mean
    from attnbench.core.problem import parse_dtype
    from attnbench.run.check import run_checks, triton_rows_interpreted
    from attnbench.run.session import resolve_device
    from attnbench.run.start import load_backends
    from attnbench.variants import registry

    fmt = O.output_format(fmt, json_out)
    load_backends([str(f) for f in backend_file or ()])  # a user's backends are checked like ours
    dtype = dtype or "float32,float16"
    names = [s.strip() for s in variants.split(",") if s.strip()] if variants is not None else registry.names()
    if not names:
        raise UsageError(f"--variants '{variants}' names no variant; accepted: a comma-separated list of "
                         f"{', '.join(registry.names())}")
    for n in names:
        registry.get(n)
    dtypes = tuple(parse_dtype(d) for d in dtype.split(","))
    only = [s.strip() for s in backends.split(",") if s.strip()] if backends is not None else None
    if only is not None:
        known = sorted({b for n in names for b in registry.get(n).backend_names()})
        bad = [b for b in only if b not in known] or ([] if only else [backends])
        if bad:
            raise UsageError(f"unknown backend '{bad[0]}'{did_you_mean(bad[0], known)} for the variants checked; "
                             f"accepted: {', '.join(known)}")
    dev = resolve_device(device)
    rows = run_checks(names, dev, only, dtypes)
    wants_triton = only is None or "triton" in only
    has_triton = any("triton" in registry.get(n).backend_names() for n in names)
    if dev.type != "cuda" and wants_triton and has_triton:
        rows += triton_rows_interpreted([n for n in names if "triton" in registry.get(n).backend_names()], dtypes)
    if fmt == "json":
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        Console().print(_check_table(rows, dev.type))
    if any(r.passed is False for r in rows):
        raise typer.Exit(1)

def _check_table(rows, device: str) -> Table:
    t = Table(title=f"attnbench check on {device}", header_style="bold")
    for c in ("variant", "backend", "dtype", "shape", "rel L2", "max abs", "bound", "result"):
        t.add_column(c, overflow="fold")
    for r in rows:
        res = {True: "[green]pass[/]", False: "[bold red]FAIL[/]", None: "[dim]skip[/]"}[r.passed]
        fmt = lambda x: "-" if x is None else f"{x:.1e}"  # noqa: E731
        t.add_row(r.variant, r.backend, r.dtype, r.shape, fmt(r.rel_l2), fmt(r.max_abs), fmt(r.bound),
                  res + (f" {r.note}" if r.note else ""))
    return t
