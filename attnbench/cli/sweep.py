"""`attnbench run`: a sweep's options, checked and handed to run/session.py; the plan, the live
view and the output formats live in cli/plan_view.py, cli/live.py and cli/run_output.py."""

from __future__ import annotations

import sys
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
             "mem, tflops, err, kv (KV/token), kvseq (KV/seq), energy (J per call), note (default: all; kv and "
             "kvseq only with decode, energy only where measured).")] = None,
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
            help="A local Hugging Face config.json or its folder, read by transformers' own config classes "
                 "(nothing is downloaded), to take the model's attention from.",
            rich_help_panel=WHAT, metavar="FILE|DIR",
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
    # GPU timing (measure/graphs.py, measure/clocks.py): to move into the run settings object
    cuda_graph: Annotated[bool, typer.Option(
        "--cuda-graph", rich_help_panel=MEASURE, metavar=FLAG,
        help="Time replays of a CUDA graph of 10 calls (fwd and decode), checked with the profiler to run "
             "eager's kernels; records timing.mode. On a CPU: unavailable, with the reason.")] = False,
    keep_throttled: Annotated[bool, typer.Option(
        "--keep-throttled", rich_help_panel=MEASURE, metavar=FLAG,
        help="Keep samples taken while the GPU throttled in the median (default: excluded, the "
             "fraction recorded in clocks.excluded_frac).")] = False,
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
    from attnbench.run.plan import load_suite, make_sweep
    from attnbench.run.session import default_out, resolve_device, run_sweep

    fmt, cols = check_output(fmt, json_out, csv_out, columns, quiet, verbose)
    shard_kn = _check_options(time_budget, profile_dir, world_size, executor, address, shard, threads, rounds)
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
    if kv_layout is not None or page_size is not None or seq_dist is not None:  # issue 21: variants declaring them
        from attnbench.variants.paged import flag_params

        given["params"] = given.get("params", {}) | flag_params(kv_layout, page_size, seq_dist)
    model_plan = None
    if model is not None or model_config is not None:
        from attnbench.run.models import model_plan as plan_models
        from attnbench.run.models import resolve_models

        model_plan = plan_models(resolve_models(model, model_config, layers), given | {"suite": suite},
                                 resolve_device(device))
    elif layers is not None and layers < 1:
        raise UsageError(f"--layers must be at least 1 (got {layers})")
    if suite is None and not given and model_plan is None:
        suite = "quick"
    from attnbench.measure.inputs import check_inputs

    if model_plan is not None:
        meta, sweeps = {}, []
    elif suite is not None:
        sweeps, meta = load_suite(suite, **given)
    else:
        meta = {}
        sweeps = [make_sweep(**given)]
    dev = resolve_device(meta.get("device", device) if device == "auto" else device)
    out = out or default_out()
    budget = time_budget if time_budget is not None else float(meta.get("time_budget", 30.0))
    suite_rounds, ref_limit, sample_time = _suite_settings(meta, suite)
    rounds = rounds if rounds is not None else suite_rounds
    inputs = check_inputs(inputs or meta.get("inputs", "randn"))
    if dry_run:
        from attnbench.cli.run_output import print_dry_run
        from attnbench.run.session import plan_sweep

        plan, refs_s = plan_sweep(
            sweeps, dev, time_budget=budget, threads=threads, shard=shard_kn,
            world_size=world_size, executor=executor, rounds=rounds, inputs=inputs, reference_limit=ref_limit,
            sample_time=sample_time, cases=list(model_plan.cases) if model_plan else None,
        )
        print_dry_run(plan, refs_s, fmt, out_console, verbose, _model_entries(model_plan))
        return
    from attnbench.cli.live import make_view

    view = make_view(err_console, machine_stdout=fmt != "table", quiet=quiet, verbose=verbose, yes=yes, columns=cols)
    records, interrupted = run_sweep(
        sweeps,
        dev,
        out,
        time_budget=budget,
        threads=threads,
        resume=resume,
        force=force,
        console=err_console,
        command=["attnbench", *ctx.obj["argv"]],
        profile_dir=profile_dir,
        shard=shard_kn,
        world_size=world_size,
        executor=executor,
        address=address,
        rounds=rounds,
        inputs=inputs,
        reference_limit=ref_limit,
        sample_time=sample_time,
        **_model_run(model_plan, layers),
        view=view,
        keep_throttled=keep_throttled,
        cuda_graph=cuda_graph_option(cuda_graph, dev),
    )
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


def _model_entries(plan) -> list[dict] | None:
    """The dry run's `models` list (run/models.plan_entries), None without a model."""
    if plan is None:
        return None
    from attnbench.run.models import plan_entries

    return plan_entries(list(plan.specs), plan.cases)


def _model_run(plan, layers: int | None) -> dict:
    """run_sweep's arguments for --model/--model-config/--layers (run/models.py)."""
    from attnbench.run.models import annotator

    hook = annotator(plan, layers)
    return {"cases": list(plan.cases) if plan else None, "annotate": hook} if hook else {}


def _check_options(time_budget, profile_dir, world_size, executor, address, shard, threads, rounds
                   ) -> tuple[int, int] | None:
    """run's scalar options, each checked on its own (one line per mistake); returns --shard as (K, N)."""
    from attnbench.core.schema import positive_finite

    if time_budget is not None:
        positive_finite(time_budget, "--time-budget", " of seconds")
    if profile_dir is not None and not profile_dir.parent.exists():
        raise UsageError(f"--profile-dir '{profile_dir}': directory '{profile_dir.parent}' does not exist")
    if world_size is not None and world_size < 1:
        raise UsageError(f"--world-size must be at least 1 (got {world_size})")
    if executor not in ("local", "ray"):
        raise UsageError(f"unknown --executor '{executor}'; accepted: local, ray")
    if address is not None and executor != "ray":
        raise UsageError("--address goes with --executor ray")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1 (got {threads})")
    if rounds is not None and rounds < 1:
        raise UsageError(f"--rounds must be at least 1 (got {rounds})")
    if shard is None:
        return None
    from attnbench.run.executors import parse_shard

    return parse_shard(shard)


def _suite_settings(meta: dict, suite: str | None) -> tuple[int, int | None, float | None]:
    """A suite's rounds, reference_limit and sample_time, checked (one line naming the suite)."""
    r = meta.get("rounds", 1)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise UsageError(f"suite '{suite}': rounds must be an integer >= 1 (got {r!r})")
    ref_limit, sample_time = meta.get("reference_limit"), meta.get("sample_time")
    if sample_time is not None and (
        not isinstance(sample_time, (int, float)) or isinstance(sample_time, bool) or sample_time <= 0
    ):
        raise UsageError(f"suite '{suite}': sample_time must be a positive number of seconds (got {sample_time!r})")
    if ref_limit is not None and (not isinstance(ref_limit, int) or isinstance(ref_limit, bool) or ref_limit < 0):
        raise UsageError(
            f"suite '{suite}': reference_limit must be a whole number of score elements (got {ref_limit!r})"
        )
    return r, ref_limit, sample_time


def cuda_graph_option(wanted: bool, dev) -> bool:
    """--cuda-graph: on a device without CUDA graphs say so once (each record says it too)."""
    from attnbench.measure.graphs import unavailable_reason

    why = unavailable_reason(dev, "fwd") if wanted else None
    if why:
        say(err_console, f"--cuda-graph: unavailable: {why}")
    return wanted
