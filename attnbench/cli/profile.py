"""`attnbench profile`: where the time and memory of one attention call go (torch.profiler,
optionally Nsight Systems / Nsight Compute). The work is in attnbench/profile/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from attnbench.cli import options as O
from attnbench.core.errors import UsageError, say

out_console = Console()
err_console = Console(stderr=True)


def profile(
    variants: O.Variants = None,
    backends: O.Backends = None,
    seq: O.Seq = None,
    kv_seq: O.KvSeq = None,
    batch: O.Batch = None,
    heads: O.Heads = None,
    kv_heads: O.KvHeads = None,
    kv_groups: O.KvGroups = None,
    head_dim: O.HeadDim = None,
    dtype: O.Dtype = None,
    causal: O.Causal = None,
    mode: O.Mode = None,
    device: O.Device = "auto",
    param: O.Param = None,
    out: O.Out = None,
    with_stack: Annotated[bool, typer.Option("--with-stack", help="Record Python frames into trace.json.")] = False,
    warmup: Annotated[int, typer.Option("--warmup", metavar="N", help="Untimed calls before the profiled ones.")] = 2,
    calls: Annotated[int, typer.Option("--calls", metavar="N", help="Profiled calls.")] = 1,
    top: Annotated[int, typer.Option("--top", metavar="N", help="Rows in the operator tables.")] = 15,
    nsys: Annotated[bool, typer.Option("--nsys", help="Also re-run the case under Nsight Systems (CUDA).")] = False,
    ncu: Annotated[bool, typer.Option("--ncu", help="Also re-run the case under Nsight Compute (CUDA).")] = False,
    nvtx_only: Annotated[
        bool, typer.Option("--nvtx-only", hidden=True, help="Internal: the Nsight child run.")
    ] = False,
) -> None:
    """Profile one attention call: top operators/kernels, the attention kernel, time by
    named range, a Perfetto trace and a memory timeline against the memory model.

    One case: one variant (required), one backend (default: the variant's first) and one value
    per shape option (--seq default 1k; in decode mode the KV-cache length). --out: the
    folder written (default results/profile-<variant>-<backend>-<time>).

    Examples:

      attnbench profile --variants mha --backends eager --seq 2k --out /tmp/prof

      attnbench profile --variants gqa --backends sdpa --seq 8k --mode fwd+bwd --calls 3

      attnbench profile --variants flash --backends sdpa-flash --device cuda --nsys
    """
    from attnbench.profile import call as profiling
    from attnbench.profile import nsight as ns
    from attnbench.profile.view import render
    from attnbench.run.session import resolve_device
    from attnbench.variants import registry

    if warmup < 0 or calls < 1 or top < 1:
        raise UsageError(f"--warmup must be >= 0, --calls and --top >= 1 (got {warmup}, {calls}, {top})")
    dev = resolve_device(device)
    for tool in ("nsys",) * nsys + ("ncu",) * ncu:
        if (why := ns.unavailable(tool, dev)) is not None:
            raise UsageError(why)
    variant = _one(variants, "--variants", "a variant (see `attnbench list`)")
    backend = _one(backends, "--backends", "one backend") if backends else None
    backend = backend or registry.get(variant).backend_names()[0]
    axes = O.shape_axes(seq or "1k", kv_seq, batch, heads, kv_heads, kv_groups, head_dim, dtype, causal, mode)
    if "," in axes["seq"] or ".." in axes["seq"]:
        raise UsageError(f"profile runs one case: give one --seq length (got '{seq}'), e.g. --seq 2k")
    params = profiling.parse_params(param, variant)
    case = profiling.resolve_case(variant, backend, dev, **axes, **({"params": params} if params else {}))
    if nvtx_only:
        if dev.type != "cuda":
            raise UsageError("--nvtx-only needs a CUDA device")
        return ns.run_nvtx_only(case, dev, warmup, calls)
    out = out or Path("results") / f"profile-{variant}-{backend}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' is a file; give a folder")
    import os

    parent = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        from attnbench.core.safe_io import OutputError

        raise OutputError(
            f"cannot write --out '{out}': '{parent}' is not writable (read-only or no "
            f"permission); nothing was written"
        )
    report = _profile_or_exit(case, dev, out, warmup=warmup, calls=calls, with_stack=with_stack, top=top)
    render(report, out_console)
    _nsight(("nsys",) * nsys + ("ncu",) * ncu, out, case, dev, warmup, calls)


def _one(value: str | None, option: str, what: str) -> str:
    names = [s.strip() for s in (value or "").split(",") if s.strip()]
    if len(names) != 1:
        raise UsageError(f"profile runs one case: give {option} with {what} (got '{value or ''}')")
    return names[0]


def _profile_or_exit(case, dev, out: Path, **kw):
    """profiling.profile_case; running out of memory is one line and exit code 1."""
    from attnbench.profile.call import profile_case

    try:
        return profile_case(case, dev, out, **kw)
    except (MemoryError, RuntimeError) as e:
        if not (isinstance(e, MemoryError) or "out of memory" in str(e).lower()):
            raise
        say(err_console, f"the call ran out of memory: {' '.join(str(e).split())[:200]}", "error:")
        raise typer.Exit(1) from None


def _nsight(tools: tuple[str, ...], out: Path, case, dev, warmup: int, calls: int) -> None:
    from attnbench.profile import nsight as ns

    for tool in tools:
        rc, cmd, rep = ns.run(tool, out, case, dev, warmup, calls)
        out_console.print(
            f"[bold]{tool}:[/] {'wrote ' + str(rep) if rc == 0 else f'failed (exit {rc})'}  [dim]{' '.join(cmd)}[/]",
            highlight=False,
            soft_wrap=True,
        )
        if rc != 0:
            raise typer.Exit(1)
