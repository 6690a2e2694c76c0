"""`attnbench run`: a sweep's options, checked and handed to run/session.py; the plan, the live
view and the output formats live in cli/plan_view.py, cli/live.py and cli/run_output.py."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from attnbench.core.errors import UsageError, say

# Piped output is not cut to 80 columns: tables stay readable in files and CI logs.
out_console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)
WHAT, SHAPES, MEASURE, OUTPUT, SCALE = "What to run", "Shapes", "Measurement", "Output", "Scale-out"
FLAG = ""  # no type shown for on/off flags in the help


def register(app: typer.Typer) -> None:
    app.command()(run)


def run(
    ctx: typer.Context,
    variants: Annotated[Optional[str], typer.Option(
        help="Comma-separated variants (see `attnbench list`).", metavar="LIST", rich_help_panel=WHAT)] = None,
    backends: Annotated[Optional[str], typer.Option(
        help="Comma-separated backends; default: all of each variant.", metavar="LIST", rich_help_panel=WHAT)] = None,
    suite: Annotated[Optional[str], typer.Option(
        help="A suite name (quick, ...) or a .toml path; flags override its axes.", metavar="NAME|FILE",
        rich_help_panel=WHAT)] = None,
    mode: Annotated[Optional[list[str]], typer.Option(
        help="fwd | bwd | fwd+bwd | decode (repeatable or comma-separated).", metavar="MODE",
        rich_help_panel=WHAT)] = None,
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", metavar="NAME=VALUE", rich_help_panel=WHAT,
        help="Variant parameter (repeatable), e.g. --param window=512; applies to the variants that "
             "declare it (see `attnbench list`).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", rich_help_panel=WHAT, metavar=FLAG,
        help="Print the plan (cases, predicted time and peak memory, what will not run and why) and exit; "
             "with --json, as JSON.")] = False,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", rich_help_panel=WHAT, metavar=FLAG,
        help="Do not ask for confirmation when the plan is predicted over 10 minutes (asked on a terminal "
             "only).")] = False,
    seq: Annotated[Optional[str], typer.Option(
        help="Lengths: 1k..64k doubles, 1k,3k,8k lists, k = 1024.", metavar="LENGTHS", rich_help_panel=SHAPES)] = None,
    kv_seq: Annotated[Optional[str], typer.Option(
        "--kv-seq", help="Key/value length (cross attention); same grammar.", metavar="LENGTHS",
        rich_help_panel=SHAPES)] = None,
    batch: Annotated[Optional[list[str]], typer.Option(
        help="Batch size (repeatable).", metavar="N", rich_help_panel=SHAPES)] = None,
    heads: Annotated[Optional[list[str]], typer.Option(
        help="Query heads (repeatable).", metavar="N", rich_help_panel=SHAPES)] = None,
    kv_heads: Annotated[Optional[list[str]], typer.Option(
        "--kv-heads", help="Key/value heads; must divide heads.", metavar="N", rich_help_panel=SHAPES)] = None,
    kv_groups: Annotated[Optional[list[str]], typer.Option(
        "--kv-groups", help="Query heads per KV head (excludes --kv-heads).", metavar="N",
        rich_help_panel=SHAPES)] = None,
    head_dim: Annotated[Optional[list[str]], typer.Option(
        "--head-dim", help="Head dimension (repeatable).", metavar="N", rich_help_panel=SHAPES)] = None,
    dtype: Annotated[Optional[str], typer.Option(
        help="float32 | float16 | bfloat16 (comma-separated for several).", metavar="LIST",
        rich_help_panel=SHAPES)] = None,
    causal: Annotated[Optional[bool], typer.Option(
        "--causal/--no-causal", help="Causal mask (bottom-right aligned).", rich_help_panel=SHAPES,
        metavar=FLAG)] = None,
    device: Annotated[str, typer.Option(
        "--device", help="auto | cpu | cuda (auto: cuda when visible).", metavar="DEVICE",
        rich_help_panel=MEASURE)] = "auto",
    time_budget: Annotated[Optional[float], typer.Option(
        "--time-budget", metavar="SECONDS", rich_help_panel=MEASURE,
        help="Seconds of measurement per case (default 30, or the suite's); setup and compilation get 60 s "
             "more.")] = None,
    threads: Annotated[Optional[int], typer.Option(
        help="CPU threads for torch (recorded); default: torch's.", metavar="N", rich_help_panel=MEASURE)] = None,
    rounds: Annotated[Optional[int], typer.Option(
        metavar="N", rich_help_panel=MEASURE,
        help="Measure every case this many times, interleaved with the others (forward, then backward), pooling "
             "the samples: averages out a shared machine's drift (default 1, or the suite's).")] = None,
    inputs: Annotated[Optional[str], typer.Option(
        metavar="KIND", rich_help_panel=MEASURE,
        help="Inputs: randn (q, k, v ~ N(0,1): near-uniform attention, the default) | peaked (per-head "
             "temperatures and attention sinks, like a trained model's); recorded with the exact attention's "
             "mean entropy.")] = None,
    profile_dir: Annotated[Optional[Path], typer.Option(
        "--profile-dir", help="Save a trace of one call per case as DIR/<case_id>.json.", metavar="DIR",
        rich_help_panel=MEASURE)] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Results file (JSONL); default results/run-<time>.jsonl.", metavar="FILE",
        rich_help_panel=OUTPUT)] = None,
    resume: Annotated[bool, typer.Option(
        help="Skip cases already in --out and append the rest.", rich_help_panel=OUTPUT, metavar=FLAG,
        show_default=False)] = False,
    force: Annotated[bool, typer.Option(
        help="Replace an existing --out (only once the new run's first record is written).",
        rich_help_panel=OUTPUT, metavar=FLAG, show_default=False)] = False,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", metavar="table|json|csv", rich_help_panel=OUTPUT,
        help="What stdout gets at the end: the table (default), the records as JSON (= --json) or as CSV.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option(
        "--csv", metavar="FILE", rich_help_panel=OUTPUT,
        help="Also write the records as CSV to FILE (one row per case, raw numbers).")] = None,
    columns: Annotated[Optional[str], typer.Option(
        "--columns", "--metrics", metavar="LIST", rich_help_panel=OUTPUT,
        help="The table's columns, comma-separated, from: variant, backend, mode, shape, heads, status, ms, iqr, "
             "mem, tflops, err, kv (KV/token), note (default: all; kv only with decode).")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", rich_help_panel=OUTPUT, metavar=FLAG,
        help="Print only errors and the results file's path.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", rich_help_panel=OUTPUT, metavar=FLAG,
        help="Per-case details: the plan case by case, and how each case was measured (samples, stop rule, "
             "setup, first call, kernel, error).")] = False,
    world_size: Annotated[Optional[int], typer.Option(
        "--world-size", help="Ranks for distributed variants (ring); launched locally.", metavar="N",
        rich_help_panel=SCALE)] = None,
    executor: Annotated[str, typer.Option(
        help="local | ray (each case a Ray task).", metavar="local|ray", rich_help_panel=SCALE)] = "local",
    address: Annotated[Optional[str], typer.Option(
        help="Ray cluster address (default: start one in-process).", metavar="ADDRESS",
        rich_help_panel=SCALE)] = None,
    shard: Annotated[
        Optional[str],
        typer.Option(
            help="Run only shard K/N of the cases (e.g. 0/4); merge with `attnbench merge`.", metavar="K/N",
            rich_help_panel=SCALE,
        ),
    ] = None,
    kv_layout: Annotated[
        Optional[str],
        typer.Option("--kv-layout", rich_help_panel=SHAPES, metavar="paged|dense",
                     help="KV cache of ragged-batch variants (paged): paged (pages + block table) | dense (padded)."),
    ] = None,
    page_size: Annotated[
        Optional[int],
        typer.Option("--page-size", rich_help_panel=SHAPES, metavar="N", help="Tokens per KV page (default 16)."),
    ] = None,
    seq_dist: Annotated[
        Optional[str],
        typer.Option("--seq-dist", rich_help_panel=SHAPES, metavar="DIST",
                     help="Sequence lengths of a ragged batch: fixed (all --seq) | uniform:1k..16k (seeded draws) "
                          "| 1k,3k,8k (cycled over the batch)."),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            help="Model presets (comma-separated, see `attnbench list --models`): their heads, KV heads, head "
                 "dim, dtype, causal mask and attention pattern; flags given replace them, --seq stays yours.",
            rich_help_panel=WHAT, metavar="LIST",
        ),
    ] = None,
    model_config: Annotated[
        Optional[Path],
        typer.Option(
            "--model-config",
            help="A local Hugging Face config.json (nothing is downloaded) to take the model's attention from.",
            rich_help_panel=WHAT, metavar="FILE",
        ),
    ] = None,
    layers: Annotated[
        Optional[int],
        typer.Option(
            help="Layers for the KV-cache arithmetic of fwd and decode records (default: the model's; without a "
                 "model: the measured attention × N).",
            rich_help_panel=SHAPES, metavar="N",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", rich_help_panel=OUTPUT, metavar=FLAG,
        help="Print the records as JSON instead of a table (= --format json).")] = False,
) -> None:
    """Run a sweep; with no arguments, the quick suite on the best device.

    It first prints the plan (cases, predicted time and peak memory, what will not run and why),
    then each case as it finishes (a live table on a terminal, one line per case when piped), then
    the results table. A plan predicted over 10 minutes asks for confirmation on a terminal (--yes
    skips it; answering no exits 1, nothing written); not on a terminal it says so and runs.

    Examples:

      attnbench run  (the quick suite, about a minute)

      attnbench run --variants flash,gqa,performer --seq 1k..64k --dry-run  (the plan only)

      attnbench run --variants flash,gqa --seq 1k..16k --mode fwd,decode --csv r.csv --columns variant,backend,L,ms,mem

      attnbench run --suite quick --out r.jsonl -q | xargs attnbench show
    """
    from attnbench.cli.run_output import check_output, print_results
    from attnbench.run.models import annotator
    from attnbench.run.plan import load_suite, make_sweep
    from attnbench.run.session import default_out, resolve_device, run_sweep
    from attnbench.run.settings import build as build_settings

    fmt, cols = check_output(fmt, json_out, csv_out, columns, quiet, verbose)
    scope = _scope(profile_dir, world_size, executor, address, shard)
    axes = {
        "variants": variants,
        "backends": backends,
        "seq": seq,
        "kv_seq": kv_seq,
        "batch": batch,
        "heads": heads,
        "kv_heads": kv_heads,
        "kv_groups": kv_groups,
        "head_dim": head_dim,
        "dtype": dtype,
        "causal": causal,
        "modes": mode,
    }
    given = {k: v for k, v in axes.items() if v not in (None, [])}
    if param:
        from attnbench.run.plan import parse_param_items

        given["params"] = parse_param_items(param)
    if kv_layout is not None or page_size is not None or seq_dist is not None:  # variants declaring them
        from attnbench.variants.paged import flag_params

        given["params"] = given.get("params", {}) | flag_params(kv_layout, page_size, seq_dist)
    cli_settings = {"time_budget": time_budget, "threads": threads, "rounds": rounds, "inputs": inputs,
                    "device": None if device == "auto" else device}
    settings = build_settings(None, None, **cli_settings)  # the options' own mistakes first
    model_plan = None
    if model is not None or model_config is not None:
        from attnbench.run.models import model_plan as plan_models
        from attnbench.run.models import resolve_models

        model_plan = plan_models(resolve_models(model, model_config, layers), given | {"suite": suite},
                                 resolve_device(device))
        scope = replace(scope, extra=tuple(model_plan.cases))
    elif layers is not None and layers < 1:
        raise UsageError(f"--layers must be at least 1 (got {layers})")
    if suite is None and not given and model_plan is None:
        suite = "quick"
    if model_plan is not None:
        sweeps = []
    elif suite is not None:
        sweeps, meta = load_suite(suite, **given)
        settings = build_settings(meta, suite, **cli_settings)
    else:
        sweeps = [make_sweep(**given)]
    out = out or default_out()
    if dry_run:
        from attnbench.cli.run_output import print_dry_run
        from attnbench.run.session import plan_sweep

        plan, refs_s = plan_sweep(sweeps, settings, scope)
        print_dry_run(plan, refs_s, fmt, out_console, verbose)
        return
    from attnbench.cli.live import make_view

    view = make_view(err_console, machine_stdout=fmt != "table", quiet=quiet, verbose=verbose, yes=yes, columns=cols)
    records, interrupted = run_sweep(
        sweeps, settings, out, scope=scope, resume=resume, force=force, profile_dir=profile_dir,
        command=["attnbench", *ctx.obj["argv"]], annotate=annotator(model_plan, layers), console=err_console,
        view=view,
    )
    dev = resolve_device(settings.device)
    print_results(records, out, dev.type, fmt=fmt, columns=cols, csv_out=csv_out, quiet=quiet, console=out_console)
    if interrupted:
        import signal

        how = " (the case in flight was abandoned)" if interrupted.abandoned else ""
        try:  # after SIGHUP the terminal may be gone: the records are kept either way
            kept = (
                f"{len(records)} records kept in {out}; resume with the same command plus --out {out} --resume"
                if records
                else f"no case finished, nothing written to {out}"
            )
            say(err_console, f"interrupted by {signal.Signals(interrupted.signum).name}{how}: {kept}")
        except OSError:
            pass
        raise typer.Exit(128 + interrupted.signum)


def _scope(profile_dir, world_size, executor, address, shard):
    """run's scale-out options as a session Scope, each checked on its own (one line per mistake)."""
    from attnbench.run.executors import parse_shard
    from attnbench.run.session import Scope

    if profile_dir is not None and not profile_dir.parent.exists():
        raise UsageError(f"--profile-dir '{profile_dir}': directory '{profile_dir.parent}' does not exist")
    if profile_dir is not None and profile_dir.exists() and not profile_dir.is_dir():
        raise UsageError(f"--profile-dir '{profile_dir}' is a file; give a directory (created if missing)")
    if world_size is not None and world_size < 1:
        raise UsageError(f"--world-size must be at least 1 (got {world_size})")
    if executor not in ("local", "ray"):
        raise UsageError(f"unknown --executor '{executor}'; accepted: local, ray")
    if address is not None and executor != "ray":
        raise UsageError("--address goes with --executor ray")
    return Scope(shard=parse_shard(shard) if shard is not None else None, world_size=world_size,
                 executor=executor, address=address)
