"""`attnbench frontier`: the longest sequence each variant/backend runs within a memory budget."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from attnbench.cli import options as O
from attnbench.core.errors import UsageError, say
from attnbench.core.units import fmt_bytes


def frontier(
    variants: O.Variants = None,
    memory_budget: O.MemoryBudget = None,
    backends: O.Backends = None,
    axis: Annotated[str, typer.Option("--axis", metavar="AXIS", help="The axis searched (only seq for now).")] = "seq",
    start: Annotated[str, typer.Option("--start", metavar="LEN",
                                       help="First length tried (512, 4k; k = 1024).")] = "1k",
    max_seq: Annotated[str, typer.Option("--max-seq", metavar="LEN", help="Stop doubling here.")] = "1m",
    batch: O.Batch = None,
    heads: O.Heads = None,
    kv_heads: O.KvHeads = None,
    head_dim: O.HeadDim = None,
    dtype: O.Dtype = None,
    causal: O.Causal = None,
    mode: O.Mode = None,
    param: O.Param = None,
    device: O.Device = "auto",
    call_limit: Annotated[float, typer.Option(
        "--call-limit", metavar="SECONDS", help="Seconds one call may take; a longer one ends the search.")] = 60.0,
    out: O.Out = None,
    force: O.Force = False,
    fmt: O.Format = None,
    json_out: O.Json = False,
    model: O.Model = None,
    layers: O.Layers = None,
) -> None:
    """The longest sequence each variant/backend runs within a memory budget.

    Doubling, then bisection; every probe runs in the isolated worker with the budget
    enforced there, so an out-of-memory probe never kills the tool. --memory-budget default
    8GiB; --variants default mha,flash; --out: the frontier as JSON. Shape options take one
    value each.

    Examples:

      attnbench frontier --variants mha,flash --memory-budget 8GiB

      attnbench frontier --variants gqa --backends eager,sdpa --memory-budget 2GiB --mode fwd+bwd
    """
    from attnbench.core.results import atomic_write_text
    from attnbench.run.frontier import FrontierRequest, search

    fmt = O.output_format(fmt, json_out)
    if axis != "seq":
        raise UsageError(f"unknown --axis '{axis}'; accepted: seq")
    from attnbench.core.schema import positive_finite

    positive_finite(call_limit, "--call-limit", " of seconds")
    budget = memory_budget or "8GiB"
    nbytes = O.parse_size(budget)
    O.check_out(out, force)
    shape = O.shape_axes(None, None, batch, heads, kv_heads, None, head_dim, dtype, causal, mode)
    req = FrontierRequest(variants or "mha,flash", backends, shape, param, nbytes, start, max_seq, device,
                          call_limit, model, layers, given=frozenset(shape))
    doc, rows = search(req, lambda line: say(Console(stderr=True), line))
    if out is not None:
        atomic_write_text(out, json.dumps(doc, indent=2))
    if fmt == "json":
        print(json.dumps(doc, indent=2))
        return
    Console().print(_table(rows, budget, doc["device"]))


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
