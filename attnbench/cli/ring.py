"""`attnbench ring`: context-parallel attention (ring, Ulysses, hybrid) on P ranks, spawned here or under
torchrun."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from attnbench.cli import options as O
from attnbench.core.errors import UsageError

err_console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 200)  # piped: tables stay whole


def ring(
    seq: O.Seq = None,
    world_size: O.WorldSize = None,
    causal: O.Causal = None,
    batch: O.Batch = None,
    heads: O.Heads = None,
    kv_heads: O.KvHeads = None,
    head_dim: O.HeadDim = None,
    dtype: O.Dtype = None,
    block: Annotated[str, typer.Option("--block", metavar="BACKEND",
                                       help="Local block backend: sdpa | eager | triton.")] = "sdpa",
    layout: Annotated[str, typer.Option("--layout", metavar="LAYOUT",
                                        help="zigzag | contiguous (how a causal sequence is split).")] = "zigzag",
    strategy: Annotated[str, typer.Option("--strategy", metavar="STRATEGY",
                                          help="ring | ulysses | hybrid (Ulysses × ring).")] = "ring",
    ulysses: Annotated[int, typer.Option("--ulysses", metavar="N",
                                         help="hybrid's Ulysses degree (ring degree = ranks / it).")] = 2,
    device: O.Device = "auto",
    threads: O.Threads = None,
    single_rank: Annotated[bool, typer.Option(
        "--single-rank/--no-single-rank", help="Also time one rank alone (scaling efficiency).")] = True,
    rank_deadline: Annotated[float, typer.Option(
        "--rank-deadline", metavar="SECONDS", help="Seconds per case before its ranks are killed.")] = 600.0,
    out: O.Out = None,
    force: O.Force = False,
) -> None:
    """Context-parallel attention on P ranks (ring by default; --strategy ulysses | hybrid):
    latency (max over ranks), compute/communication split, bytes sent, peak memory per rank,
    scaling efficiency T1/(P·TP). Runs under torchrun too (rank 0 writes the file).

    --out: the results file (default results/ring-<time>.jsonl). --device cpu runs the ranks
    over gloo, cuda over nccl with one GPU per rank. --threads: per rank (default: cores /
    ranks). --seq default 4k. --world-size default: torchrun's WORLD_SIZE, else 2.

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
    if rank_deadline <= 0 or rank_deadline != rank_deadline:
        raise UsageError(f"--rank-deadline must be a positive number of seconds (got {rank_deadline})")
    if strategy not in ("ring", "ulysses", "hybrid"):
        raise UsageError(f"unknown --strategy '{strategy}'; accepted: ring, ulysses, hybrid")
    shape = O.shape_axes(seq or "4k", None, batch, heads, kv_heads, None, head_dim, dtype, causal)
    cases = _ring_cases(shape, world, block, layout, strategy, ulysses)
    rank0 = not under_torchrun() or os.environ.get("RANK") == "0"
    records = _run_ring(cases, world, device, threads, single_rank, rank_deadline, out, force, rank0)
    if rank0:
        out_console.print(_ring_table(records))


def _ring_cases(shape: dict, world: int, block: str, layout: str, strategy: str = "ring", ulysses: int = 2):
    from attnbench.cli.options import one_each
    from attnbench.core.problem import Problem
    from attnbench.run.plan import Case, make_sweep
    from attnbench.variants import registry

    v = registry.get(strategy)
    v.backend(block)  # raises with the accepted names
    extra = (("ulysses", ulysses),) if strategy == "hybrid" else ()
    sw = make_sweep(**shape)
    one = one_each(sw, strategy, ("batch", "heads", "kv_heads", "head_dim", "dtype", "causal"))
    cases = []
    for n in sw.seq:
        p = v.resolve(
            Problem(
                batch=one["batch"],
                heads=one["heads"],
                kv_heads=one["kv_heads"] or one["heads"],
                seq_q=n,
                seq_k=n,
                head_dim=one["head_dim"],
                dtype=one["dtype"],
                causal=one["causal"],
                params=(("layout", layout), ("world_size", world), *extra),
            )
        )
        why = v.why_unsupported(p) or (None if world >= 2 else "--world-size must be at least 2")
        if why:
            raise UsageError(f"{strategy} at seq={n}: {why}")
        cases.append(Case(strategy, block, p))
    return cases


def _run_ring(cases, world, device, threads, single_rank, deadline, out, force, rank0) -> list[dict]:
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
                baseline=single_rank,
                timeout=deadline,
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
