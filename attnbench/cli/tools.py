"""Commands around a sweep: the memory frontier."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from attnbench.core.errors import UsageError, say
from attnbench.core.units import fmt_bytes

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.I)


def parse_size(text: str) -> int:
    """'16GiB', '8G', '512MiB', '1.5GB' -> bytes (powers of 1024 for all suffixes)."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"bad size '{text}'; accepted: a number with K, M, G or T (e.g. 8GiB, 512MiB)")
    power = "KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0
    value = float(m.group(1)) * 1024**power
    if value <= 0:
        raise UsageError(f"bad size '{text}'; it must be positive")
    return int(value)


def register(app: typer.Typer) -> None:
    register_frontier(app)
    register_check(app)


def register_frontier(app: typer.Typer) -> None:
    @app.command()
    def frontier(
        ctx: typer.Context,
        variants: Annotated[str, typer.Option(metavar="LIST", help="Comma-separated variants.")] = "mha,flash",
        budget: Annotated[str, typer.Option(metavar="SIZE", help="Memory budget, e.g. 8GiB, 16G, 512MiB.")] = "8GiB",
        backends: Annotated[Optional[str], typer.Option(metavar="LIST",
                                                        help="Backends; default: every available one.")] = None,
        axis: Annotated[str, typer.Option(help="The axis searched (only seq for now).")] = "seq",
        start: Annotated[str, typer.Option(metavar="LEN", help="First length tried (512, 4k; k = 1024).")] = "1k",
        max_seq: Annotated[str, typer.Option("--max-seq", metavar="LEN", help="Stop doubling here.")] = "1m",
        batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
        heads: Annotated[int, typer.Option(help="Query heads.")] = 8,
        head_dim: Annotated[int, typer.Option("--head-dim", help="Head dimension.")] = 64,
        dtype: Annotated[str, typer.Option(help="float32 | float16 | bfloat16.")] = "float32",
        causal: Annotated[bool, typer.Option("--causal/--no-causal", help="Causal mask.")] = False,
        mode: Annotated[str, typer.Option(help="fwd | bwd | fwd+bwd | decode.")] = "fwd",
        device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
        time_budget: Annotated[float, typer.Option("--time-budget", metavar="SECONDS",
                                                                    help="Seconds one call may take.")] = 60.0,
        out: Annotated[Optional[Path], typer.Option(metavar="FILE",
                                                    help="Also write the frontier as JSON here.")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
        model: Annotated[Optional[str], typer.Option(
            help="A model preset (`attnbench list --models`): its shape, dtype, mask and layer groups replace "
                 "--variants and the defaults; rows gain the model's KV cache at the largest length.")] = None,
        layers: Annotated[Optional[int], typer.Option(help="Layers of --model (default: the preset's).")] = None,
    ) -> None:
        """The longest sequence each variant/backend runs within a memory budget.

        Doubling, then bisection; every probe runs in the isolated worker with the budget
        enforced there, so an out-of-memory probe never kills the tool.

        Examples:

          attnbench frontier --variants mha,flash --budget 8GiB

          attnbench frontier --variants gqa --backends eager,sdpa --budget 2GiB --mode fwd+bwd
        """
        from attnbench.core.problem import MODES, Problem, parse_dtype
        from attnbench.core.results import atomic_write_text
        from attnbench.run.frontier import default_backends, find_frontier, frontier_rows
        from attnbench.run.plan import make_sweep, parse_length
        from attnbench.run.session import resolve_device
        from attnbench.run.worker import RunConfig, Worker

        if axis != "seq":
            raise UsageError(f"unknown --axis '{axis}'; accepted: seq")
        if mode not in MODES:
            raise UsageError(f"unknown mode '{mode}'; accepted: {', '.join(MODES)}")
        from attnbench.core.schema import positive_finite

        positive_finite(time_budget, "--time-budget", " of seconds")
        nbytes = parse_size(budget)
        sw = make_sweep(variants=variants, batch=batch, heads=heads, head_dim=head_dim)
        lo, hi = parse_length(start, "--start"), parse_length(max_seq, "--max-seq")
        if out is not None and not out.parent.exists():
            raise UsageError(f"cannot write '{out}': directory '{out.parent}' does not exist")
        dev = resolve_device(device)
        base = Problem(batch=batch, heads=heads, kv_heads=0, head_dim=head_dim, dtype=parse_dtype(dtype),
                       causal=causal, mode=mode)
        cfg = RunConfig(device=dev, time_budget=time_budget, mem_limit=nbytes)
        err = Console(stderr=True)
        found = []
        groups = [(v, base, None) for v in sw.variants]
        if model is not None:
            from attnbench.run.models import frontier_groups, resolve_models

            [spec] = resolve_models(model, None, layers)
            given = {k for k in ("heads", "head_dim", "dtype", "causal")
                     if ctx.get_parameter_source(k).name not in ("DEFAULT", "DEFAULT_MAP")}
            groups = frontier_groups(spec, base, given)
            base = groups[0][1]
        refs = _refs_outside_budget(cfg, base.dtype)
        worker = Worker(cfg)
        worker.refs = refs  # handed to the limited worker when it starts
        try:
            for v, gbase, why in groups:
                if why:
                    say(err, f"  {v}: unsupported: {why}")
                    continue
                for b in (backends.split(",") if backends else default_backends(v, dev)):
                    err.print(f"searching {v}/{b} ...")
                    f = find_frontier(v, b.strip(), gbase, cfg, worker, nbytes, lo, hi, refs)
                    found.append(f)
                    say(err, f"  {v}/{b}: largest L that ran {f.largest_ok or '-'}; limit {f.limit}: {f.reason or ''}")
        finally:
            worker.close()
        rows = frontier_rows(found)
        if model is not None:
            from attnbench.run.models import frontier_kv

            rows = [r | frontier_kv(spec, r, base) for r in rows]
        doc = {"budget_bytes": nbytes, "device": dev.type, "problem": base.as_dict(), "frontier": rows}
        if out is not None:
            atomic_write_text(out, json.dumps(doc, indent=2))
        if json_out:
            print(json.dumps(doc, indent=2))
            return
        Console().print(_table(rows, budget, dev.type))

    def _refs_outside_budget(cfg, dtype: str) -> dict:
        """The in-run references (GEMM, copy) measured in a worker of their own without the memory
        limit: their large operands must not count against (or crash within) the budget."""
        from dataclasses import replace

        from attnbench.run.worker import Worker

        ref_worker = Worker(replace(cfg, mem_limit=None))
        try:
            return ref_worker.measure_refs((dtype,))
        finally:
            ref_worker.close()

    def _table(rows: list[dict], budget: str, device: str) -> Table:
        t = Table(title=f"memory frontier within {budget} on {device}", header_style="bold")
        kv = any("kv_bytes_per_seq" in r for r in rows)
        for c in ("variant", "backend", "largest L that ran", "first L that failed", "limit", "reason"):
            t.add_column(c, overflow="fold")
        if kv:
            t.add_column("model KV cache there", overflow="fold")
        for r in rows:
            t.add_row(r["variant"], r["backend"], str(r["largest_ok"] or "-"), str(r["first_failed"] or "-"),
                      r["limit"], (r["reason"] or "")[:100], *([fmt_bytes(r.get("kv_bytes_per_seq"))] if kv else []))
        return t


def register_check(app: typer.Typer) -> None:
    @app.command()
    def check(
        variants: Annotated[Optional[str], typer.Option(metavar="LIST",
                                                        help="Comma-separated variants; default: all.")] = None,
        backends: Annotated[Optional[str], typer.Option(metavar="LIST",
                                                        help="Only these backends (comma-separated).")] = None,
        dtype: Annotated[str, typer.Option(metavar="LIST", help="Comma-separated dtypes checked.")] = "float32,float16",
        device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON rows.")] = False,
    ) -> None:
        """Check every available backend against the fp32 oracle at small shapes (pass/fail).

        On a CPU-only machine the Triton kernels are run under TRITON_INTERPRET=1.
        Exit code 1 when a check fails.

        Examples:

          attnbench check --variants flash,gqa,bigbird

          attnbench check --backends sdpa,flex --dtype float32
        """
        from dataclasses import asdict

        from attnbench.core.errors import did_you_mean
        from attnbench.core.problem import parse_dtype
        from attnbench.run.check import run_checks, triton_rows_interpreted
        from attnbench.run.session import resolve_device
        from attnbench.variants import registry

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
        if json_out:
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
