"""`attnbench profile`: where the time and memory of one attention call go (torch.profiler,
optionally Nsight Systems / Nsight Compute). The work is in attnbench/profiling*.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from attnbench.core.errors import UsageError, say

out_console = Console()
err_console = Console(stderr=True)


def _axes(seq, kv_seq, batch, heads, kv_heads, kv_groups, head_dim, dtype, causal, mode, params) -> dict:
    from attnbench.run.plan import parse_length

    if "," in seq or ".." in seq:
        raise UsageError(f"profile runs one case: give one --seq length (got '{seq}'), e.g. --seq 2k")
    axes = {
        "seq": parse_length(seq),
        "kv_seq": parse_length(kv_seq, "--kv-seq") if kv_seq else None,
        "batch": batch,
        "heads": heads,
        "kv_heads": kv_heads,
        "kv_groups": kv_groups,
        "head_dim": head_dim,
        "dtype": dtype,
        "causal": causal,
        "modes": mode,
        "params": params or None,
    }
    return {k: v for k, v in axes.items() if v is not None}


def register(app: typer.Typer) -> None:
    @app.command()
    def profile(
        variant: Annotated[str, typer.Option(metavar="VARIANT", help="The variant (see `attnbench list`).")],
        backend: Annotated[Optional[str], typer.Option(metavar="BACKEND",
                                                       help="Its backend; default: the variant's first.")] = None,
        seq: Annotated[
            str, typer.Option(metavar="LEN",
                              help="Sequence length (512, 4k; k = 1024); in decode mode the KV-cache length.")
        ] = "1k",
        kv_seq: Annotated[Optional[str], typer.Option(
            "--kv-seq", metavar="LEN", help="Key/value length (cross attention); same grammar.")] = None,
        batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
        heads: Annotated[int, typer.Option(help="Query heads.")] = 8,
        kv_heads: Annotated[
            Optional[int], typer.Option("--kv-heads", help="Key/value heads; must divide heads.")
        ] = None,
        kv_groups: Annotated[Optional[int], typer.Option("--kv-groups", help="Query heads per KV head.")] = None,
        head_dim: Annotated[int, typer.Option("--head-dim", help="Head dimension.")] = 64,
        dtype: Annotated[str, typer.Option(help="float32 | float16 | bfloat16.")] = "float32",
        causal: Annotated[
            Optional[bool], typer.Option("--causal/--no-causal", help="Causal mask (bottom-right aligned).")
        ] = None,
        mode: Annotated[str, typer.Option(help="fwd | bwd | fwd+bwd | decode.")] = "fwd",
        device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
        param: Annotated[Optional[list[str]], typer.Option(metavar="NAME=VALUE",
                                                           help="Variant parameter name=value (repeatable).")] = None,
        out: Annotated[
            Optional[Path], typer.Option(metavar="DIR",
                                         help="Output folder; default results/profile-<variant>-<backend>-<time>.")
        ] = None,
        with_stack: Annotated[bool, typer.Option("--with-stack", help="Record Python frames into trace.json.")] = False,
        warmup: Annotated[int, typer.Option(help="Untimed calls before the profiled ones.")] = 2,
        calls: Annotated[int, typer.Option(help="Profiled calls.")] = 1,
        top: Annotated[int, typer.Option(help="Rows in the operator tables.")] = 15,
        nsys: Annotated[bool, typer.Option("--nsys", help="Also re-run the case under Nsight Systems (CUDA).")] = False,
        ncu: Annotated[bool, typer.Option("--ncu", help="Also re-run the case under Nsight Compute (CUDA).")] = False,
        nvtx_only: Annotated[
            bool, typer.Option("--nvtx-only", hidden=True, help="Internal: the Nsight child run.")
        ] = False,
    ) -> None:
        """Profile one attention call: top operators/kernels, the attention kernel, time by
        named range, a Perfetto trace and a memory timeline against the memory model.

        Examples:

          attnbench profile --variant mha --backend eager --seq 2k --out /tmp/prof

          attnbench profile --variant gqa --backend sdpa --seq 8k --mode fwd+bwd --calls 3

          attnbench profile --variant flash --backend sdpa-flash --device cuda --nsys
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
        backend = backend or registry.get(variant).backend_names()[0]
        axes = _axes(
            seq,
            kv_seq,
            batch,
            heads,
            kv_heads,
            kv_groups,
            head_dim,
            dtype,
            causal,
            mode,
            profiling.parse_params(param, variant),
        )
        case = profiling.resolve_case(variant, backend, dev, **axes)
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
