"""Commands for runs spread over processes and machines: `ring` (ring attention on P ranks,
spawned here or under torchrun) and `merge` (join the results files of shards or nodes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from attnbench.core.errors import UsageError, say

err_console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 200)  # piped: tables stay whole


def register(app: typer.Typer) -> None:
    register_ring(app)
    register_merge(app)


def register_ring(app: typer.Typer) -> None:
    @app.command()
    def ring(
        seq: Annotated[str, typer.Option(metavar="LENGTHS",
                                         help="Lengths: 4k,8k,16k lists, 1k..64k doubles, k = 1024.")] = "4k",
        world_size: Annotated[
            Optional[int], typer.Option("--world-size", help="Ranks (default: torchrun's WORLD_SIZE, else 2).")
        ] = None,
        causal: Annotated[bool, typer.Option("--causal/--no-causal", help="Causal mask (zig-zag shards).")] = False,
        batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
        heads: Annotated[int, typer.Option(help="Query heads.")] = 8,
        kv_heads: Annotated[Optional[int], typer.Option("--kv-heads", help="Key/value heads (default: heads).")] = None,
        head_dim: Annotated[int, typer.Option("--head-dim", help="Head dimension.")] = 64,
        dtype: Annotated[str, typer.Option(help="float32 | float16 | bfloat16.")] = "float32",
        block: Annotated[str, typer.Option(help="Local block backend: sdpa | eager | triton.")] = "sdpa",
        layout: Annotated[str, typer.Option(help="zigzag | contiguous (how a causal sequence is split).")] = "zigzag",
        strategy: Annotated[str, typer.Option(help="ring | ulysses | hybrid (Ulysses × ring).")] = "ring",
        ulysses: Annotated[int, typer.Option(help="hybrid's Ulysses degree (ring degree = ranks / it).")] = 2,
        device: Annotated[str, typer.Option(help="cpu (gloo) | cuda (nccl, one GPU per rank) | auto.")] = "auto",
        threads: Annotated[Optional[int], typer.Option(help="CPU threads per rank (default: cores / ranks).")] = None,
        baseline: Annotated[
            bool, typer.Option("--baseline/--no-baseline", help="Also time one rank (scaling efficiency).")
        ] = True,
        time_budget: Annotated[
            float, typer.Option("--time-budget", metavar="SECONDS",
                                                 help="Seconds per case before its ranks are killed.")
        ] = 600.0,
        out: Annotated[
            Optional[Path], typer.Option(metavar="FILE",
                                         help="Results file (JSONL); default results/ring-<time>.jsonl.")
        ] = None,
        force: Annotated[bool, typer.Option(help="Overwrite an existing --out.")] = False,
    ) -> None:
        """Context-parallel attention on P ranks (ring by default; --strategy ulysses | hybrid):
        latency (max over ranks), compute/communication split, bytes sent, peak memory per rank,
        scaling efficiency T1/(P·TP). Runs under torchrun too (rank 0 writes the file).

        Examples:

          attnbench ring --seq 4k,8k,16k --world-size 2 --causal

          attnbench ring --seq 8k --world-size 4 --strategy hybrid --ulysses 2 --causal

          torchrun --nproc-per-node 8 -m attnbench ring --seq 64k,128k --causal --device cuda
        """
        from attnbench.distributed.launch import under_torchrun

        world = world_size or int(os.environ.get("WORLD_SIZE", "2"))
        if under_torchrun() and world != int(os.environ["WORLD_SIZE"]):
            raise UsageError(
                f"--world-size {world} but torchrun started {os.environ['WORLD_SIZE']} ranks; "
                "leave --world-size out under torchrun"
            )
        if strategy not in ("ring", "ulysses", "hybrid"):
            raise UsageError(f"unknown --strategy '{strategy}'; accepted: ring, ulysses, hybrid")
        cases = _ring_cases(seq, world, causal, batch, heads, kv_heads, head_dim, dtype, block, layout, strategy,
                            ulysses)
        rank0 = not under_torchrun() or os.environ.get("RANK") == "0"
        records = _run_ring(cases, world, device, threads, baseline, time_budget, out, force, rank0)
        if rank0:
            out_console.print(_ring_table(records))


def _ring_cases(seq, world, causal, batch, heads, kv_heads, head_dim, dtype, block, layout, strategy="ring",
                ulysses=2):
    from attnbench.core.problem import Problem, parse_dtype
    from attnbench.run.plan import Case, parse_seq
    from attnbench.variants import registry

    v = registry.get(strategy)
    v.backend(block)  # raises with the accepted names
    extra = (("ulysses", ulysses),) if strategy == "hybrid" else ()
    cases = []
    for n in parse_seq(seq):
        p = v.resolve(
            Problem(
                batch=batch,
                heads=heads,
                kv_heads=kv_heads or heads,
                seq_q=n,
                seq_k=n,
                head_dim=head_dim,
                dtype=parse_dtype(dtype),
                causal=causal,
                params=(("layout", layout), ("world_size", world), *extra),
            )
        )
        why = v.why_unsupported(p) or (None if world >= 2 else "--world-size must be at least 2")
        if why:
            raise UsageError(f"{strategy} at seq={n}: {why}")
        cases.append(Case(strategy, block, p))
    return cases


def _run_ring(cases, world, device, threads, baseline, budget, out, force, rank0) -> list[dict]:
    from attnbench.core import results
    from attnbench.distributed.launch import run_cp_case
    from attnbench.measure import env as env_mod
    from attnbench.run.session import check_out, resolve_device
    from attnbench.run.worker import base_record

    dev = resolve_device(device)
    if out is None:
        Path("results").mkdir(exist_ok=True)
        out = Path("results") / _time_name("ring")
    if rank0:
        check_out(out, resume=False, force=force)
    writer = (
        results.Writer(out, results.make_header(["attnbench", *sys.argv[1:]], env_mod.capture(dev), None))
        if rank0
        else None
    )
    records = []
    try:
        for case in cases:
            fields = run_cp_case(
                case.problem,
                world,
                strategy=case.variant,
                ulysses=case.problem.param("ulysses"),
                device=dev.type,
                block=case.backend,
                layout=case.problem.param("layout"),
                threads=threads,
                baseline=baseline,
                timeout=budget,
            )
            if fields is not None and writer is not None:
                records.append(base_record(case, dev) | fields)
                writer.write(records[-1])
    finally:
        if writer is not None:
            writer.close()
    return records


def _time_name(prefix: str) -> str:
    import time

    return time.strftime(f"{prefix}-%Y%m%d-%H%M%S.jsonl")


def _ring_table(records: list[dict]) -> Table:
    from attnbench.core.units import fmt_bytes, fmt_len, fmt_ms

    t = Table(title="context-parallel attention")
    t.add_column("strategy")
    for col in (
        "seq",
        "causal",
        "ranks",
        "status",
        "latency",
        "1 rank",
        "efficiency",
        "comm share",
        "peak/rank",
        "error",
    ):
        t.add_column(col)
    for r in records:
        d = r.get("distributed") or {}
        pct = lambda x: f"{100 * x:.0f}%" if x is not None else "—"  # noqa: E731
        err = (r.get("error") or {}).get("rel_l2")
        t.add_row(
            r["variant"] if d.get("ulysses_degree", 1) == 1 or d.get("ring_degree", 1) == 1
            else f"hybrid {d['ulysses_degree']}×{d['ring_degree']}",
            fmt_len(r["seq_q"]),
            "yes" if r["causal"] else "no",
            str(d.get("world_size", "—")),
            r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}",
            fmt_ms((r.get("latency_ms") or {}).get("median")),
            fmt_ms(d.get("baseline_ms")),
            pct(d.get("scaling_efficiency")),
            pct(d.get("comm_share")),
            fmt_bytes(r.get("peak_mem_bytes")),
            f"{err:.1e}" if err is not None else "—",
        )
    return t


def register_merge(app: typer.Typer) -> None:
    @app.command()
    def merge(
        files: Annotated[list[Path], typer.Argument(metavar="FILES...",
                                                    help="Results files (JSONL) to merge, in order.")],
        out: Annotated[Path, typer.Option(metavar="FILE", help="The merged results file (written atomically).")],
        allow_mixed_env: Annotated[
            bool,
            typer.Option(
                "--allow-mixed-env", help="Merge files measured on different environments (device, torch, threads...)."
            ),
        ] = False,
        force: Annotated[bool, typer.Option(help="Overwrite an existing --out.")] = False,
    ) -> None:
        """Merge results files (shards of one sweep, or nodes of a cluster) under one header.

        Environments must match unless --allow-mixed-env; a case_id present twice is kept once
        (the first) and counted.

        Examples:

          attnbench merge results/shard-*.jsonl --out results/all.jsonl

          attnbench merge a.jsonl b.jsonl --out ab.jsonl --allow-mixed-env
        """
        from attnbench.core.merge import merge as merge_files

        if out.exists() and not force:
            raise UsageError(f"'{out}' already exists; add --force to overwrite it")
        if not out.parent.exists():
            raise UsageError(f"cannot write '{out}': directory '{out.parent}' does not exist")
        summary = merge_files(files, out, allow_mixed_env=allow_mixed_env, command=["attnbench", *sys.argv[1:]])
        dup = f", {summary['duplicates']} duplicate case_ids dropped" if summary["duplicates"] else ""
        say(err_console, f"merged {summary['files']} files: {summary['records']} records → {out}{dup}")
