"""`attnbench run`: a sweep's options, handed to run/start.py (what runs, how) and run/session.py
(the run); the plan, the live view and the output formats live in cli/plan_view.py, cli/live.py
and cli/run_output.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from attnbench.cli import options as O
from attnbench.core.errors import UsageError, say

# Piped output is not cut to 80 columns: tables stay readable in files and CI logs.
out_console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def run(
    ctx: typer.Context,
    variants: O.Variants = None,
    backends: O.Backends = None,
    backend_file: O.BackendFile = None,
    suite: O.Suite = None,
    mode: O.Mode = None,
    param: O.Param = None,
    model: O.Model = None,
    model_config: Annotated[Optional[Path], typer.Option(
        "--model-config", metavar="FILE|DIR", rich_help_panel=O.WHAT,
        help="A local Hugging Face config.json or its folder, read by transformers' own config classes "
             "(nothing is downloaded), to take the model's attention from.")] = None,
    definition: Annotated[Optional[Path], typer.Option(
        "--definition", metavar="FILE", rich_help_panel=O.WHAT,
        help="A FlashInfer Trace definition (JSON): its op (gqa_paged, gqa_ragged, mla_paged, mla_ragged, "
             "dsa_paged; gdn decode, prefill and mtp) run on attnbench's backends, one case per workload; see "
             "docs/flashinfer-trace.md.")] = None,
    workloads: Annotated[Optional[Path], typer.Option(
        "--workloads", metavar="FILE", rich_help_panel=O.WHAT,
        help="The definition's workloads (JSONL): their var axes and input sources (default: the var axes from "
             "--batch, --seq, --kv-seq, --seq-dist).")] = None,
    blobs: Annotated[Optional[Path], typer.Option(
        "--blobs", metavar="DIR", rich_help_panel=O.WHAT,
        help="The dataset root the workloads' safetensors paths (./blob/...) are relative to; a blob not found "
             "is synthesized from the axes and named in the record.")] = None,
    workload: Annotated[Optional[str], typer.Option(
        "--workload", metavar="UUIDS", rich_help_panel=O.WHAT,
        help="Only these workloads of --workloads (comma-separated uuids).")] = None,
    trust_reference: Annotated[bool, typer.Option(
        "--trust-reference", rich_help_panel=O.WHAT,
        help="Run the definition's reference code (in the worker): the oracle of every backend, and timed as "
             "backend `reference`. Without it the oracle is attnbench's float64 attention.")] = False,
    dry_run: O.DryRun = False,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", rich_help_panel=O.WHAT,
        help="Do not ask for confirmation when the plan is predicted over 10 minutes (asked on a terminal "
             "only).")] = False,
    seq: O.Seq = None,
    kv_seq: O.KvSeq = None,
    batch: O.Batch = None,
    heads: O.Heads = None,
    kv_heads: O.KvHeads = None,
    kv_groups: O.KvGroups = None,
    head_dim: O.HeadDim = None,
    dtype: O.Dtype = None,
    causal: O.Causal = None,
    kv_layout: O.KvLayout = None,
    page_size: O.PageSize = None,
    seq_dist: O.SeqDist = None,
    batch_spec: O.BatchSpec = None,
    layers: O.Layers = None,
    device: O.Device = "auto",
    time_budget: O.TimeBudget = None,
    threads: O.Threads = None,
    rounds: O.Rounds = None,
    inputs: Annotated[Optional[str], typer.Option(
        "--inputs", metavar="KIND", rich_help_panel=O.MEASURE,
        help="Inputs: randn (q, k, v ~ N(0,1): near-uniform attention, the default) | peaked (per-head "
             "temperatures and attention sinks, like a trained model's); recorded with the exact attention's "
             "mean entropy.")] = None,
    sample_time: Annotated[Optional[float], typer.Option(
        "--sample-time", metavar="SECONDS", rich_help_panel=O.MEASURE,
        help="Cap on the timed samples' seconds per case (default: 2 s, or the suite's sample_time).")] = None,
    reference_limit: Annotated[Optional[int], typer.Option(
        "--reference-limit", metavar="N", rich_help_panel=O.MEASURE,
        help="Largest score count (B·H·Lq·Lk) the fp64 oracle computes; larger cases record no error "
             "(default: the suite's reference_limit, else 2**27 = 1.3e8).")] = None,
    cuda_graph: Annotated[bool, typer.Option(
        "--cuda-graph", rich_help_panel=O.MEASURE,
        help="Time replays of a CUDA graph of 10 calls (fwd and decode), checked with the profiler to run "
             "eager's kernels; records timing.mode. On a CPU: unavailable, with the reason.")] = False,
    keep_throttled: Annotated[bool, typer.Option(
        "--keep-throttled", rich_help_panel=O.MEASURE,
        help="Keep samples taken while the GPU throttled in the median (default: left out, the fraction "
             "recorded in clocks.excluded_frac).")] = False,
    profile_dir: Annotated[Optional[Path], typer.Option(
        "--profile-dir", help="Save a trace of one call per case as DIR/<case_id>.json.", metavar="DIR",
        rich_help_panel=O.MEASURE)] = None,
    out: O.Out = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Skip cases already in --out and append the rest.", rich_help_panel=O.OUTPUT)] = False,
    force: O.Force = False,
    fmt: O.Format = None,
    json_out: O.Json = False,
    csv_out: Annotated[Optional[Path], typer.Option(
        "--csv", metavar="FILE", rich_help_panel=O.OUTPUT,
        help="Also write the records as CSV to FILE (one row per case, raw numbers).")] = None,
    columns: Annotated[Optional[str], typer.Option(
        "--columns", metavar="LIST", rich_help_panel=O.OUTPUT,
        help="The table's columns, comma-separated, from: variant, backend, mode, shape, heads, status, ms, iqr, "
             "mem, tflops, err, kv (KV/token/layer), kvseq (KV/seq), energy (J per call), note (default: all; kv "
             "and kvseq only with decode, energy only where measured).")] = None,
    quiet: O.Quiet = False,
    verbose: O.Verbose = False,
    world_size: O.WorldSize = None,
    executor: Annotated[str, typer.Option(
        "--executor", help="local | ray (each case a Ray task).", metavar="local|ray",
        rich_help_panel=O.SCALE)] = "local",
    address: Annotated[Optional[str], typer.Option(
        "--address", help="Ray cluster address (default: start one in-process).", metavar="ADDRESS",
        rich_help_panel=O.SCALE)] = None,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", help="Run only shard K/N of the cases (e.g. 0/4); merge with `attnbench merge`.", metavar="K/N",
        rich_help_panel=O.SCALE)] = None,
) -> None:
    """Run a sweep; with no arguments, the quick suite on the best device.

    --dry-run: the plan is cases, predicted time and peak memory, what will not run and why.

    It first prints the plan (cases, predicted time and peak memory, what will not run and why),
    then each case as it finishes (a live table on a terminal, one line per case when piped), then
    the results table. A plan predicted over 10 minutes asks for confirmation on a terminal (--yes
    skips it; answering no exits 1, nothing written); not on a terminal it says so and runs.

    Examples:

      attnbench run  (the quick suite, about a minute)

      attnbench run --variants flash,gqa,performer --seq 1k..64k --dry-run  (the plan only)

      attnbench run --variants flash,gqa --seq 1k..16k --mode fwd,decode --csv r.csv --columns variant,backend,L,ms,mem

      attnbench run --suite quick --out r.jsonl -q | xargs attnbench show

      attnbench run --variants paged --batch-spec 2q2k_32q1s1k --backends eager,sdpa,flex  (a mixed batch)
      attnbench run --variants mha --backend-file my_kernel.py  (your own backend beside ours)
      attnbench run --definition DEF.json --workloads W.jsonl --blobs DATASET --trust-reference
    """
    from attnbench.cli.run_output import check_output, print_results
    from attnbench.run.session import default_out, resolve_device, run_sweep
    from attnbench.run.start import make_scope, prepare

    fmt, cols = check_output(fmt, json_out, csv_out, columns, quiet, verbose, force)
    given = O.shape_axes(seq, kv_seq, batch, heads, kv_heads, kv_groups, head_dim, dtype, causal, mode)
    given |= {k: v for k, v in (("variants", variants), ("backends", backends)) if v is not None}
    given |= O.kv_layout_axes(kv_layout, page_size, seq_dist) | ({"batch_spec": batch_spec} if batch_spec else {})
    cli_settings = {"time_budget": time_budget, "threads": threads, "rounds": rounds, "inputs": inputs,
                    "device": None if device == "auto" else device,
                    "cuda_graph": cuda_graph or None, "keep_throttled": keep_throttled or None,
                    "sample_time": sample_time, "reference_limit": reference_limit,
                    "backend_files": [str(f) for f in backend_file] if backend_file else None}
    scope = make_scope(profile_dir, world_size, executor, address, shard)
    trace = None
    if definition is not None:
        p, trace = _prepare_definition(definition, workloads, blobs, workload, trust_reference, given,
                                       {"suite": suite, "model": model or model_config, "params": param,
                                        "layers": layers}, cli_settings, scope)
    elif workloads is not None or blobs is not None or workload is not None or trust_reference:
        raise UsageError("--workloads, --blobs, --workload and --trust-reference go with --definition FILE")
    else:
        p = prepare(given, param, suite, cli_settings, scope, model, model_config, layers)
    out = out or default_out()
    if p.settings.cuda_graph:
        _say_cuda_graph_unavailable(resolve_device(p.settings.device))
    if dry_run:
        from attnbench.cli.run_output import print_dry_run
        from attnbench.run.session import plan_sweep

        plan, refs_s = plan_sweep(p.sweeps, p.settings, p.scope)
        print_dry_run(plan, refs_s, fmt, out_console, verbose, p.models, trace)
        return
    from attnbench.cli.live import make_view

    view = make_view(err_console, machine_stdout=fmt != "table", quiet=quiet, verbose=verbose, yes=yes, columns=cols)
    records, interrupted = run_sweep(
        p.sweeps, p.settings, out, scope=p.scope, resume=resume, force=force, profile_dir=profile_dir,
        command=["attnbench", *ctx.obj["argv"]], annotate=p.annotate, console=err_console, view=view,
    )
    dev = resolve_device(p.settings.device)
    print_results(records, out, dev.type, fmt=fmt, columns=cols, csv_out=csv_out, quiet=quiet, console=out_console)
    if interrupted:
        _say_interrupted(interrupted, records, out)
        raise typer.Exit(128 + interrupted.signum)


def _prepare_definition(definition: Path, workloads: Path | None, blobs: Path | None, workload: str | None,
                        trust: bool, given: dict, others: dict, cli_settings: dict, scope):
    """run --definition: the definition's cases (run/start.py prepare_trace); the missing blobs said
    once on stderr (each record names its own)."""
    from attnbench.run.start import prepare_trace
    from attnbench.run.trace_plan import TraceRequest

    if cli_settings.get("backend_files"):
        raise UsageError("--backend-file adds backends to attnbench's variants, and a definition's backends take the "
                         "definition's own inputs (q, k_cache, kv_indptr, ...): not supported together yet; time your "
                         "kernel on the variant the definition maps to (gqa_* → paged, mla_* → mla, dsa_paged → dsa, "
                         "gdn → gdn)")
    if blobs is not None and not blobs.is_dir():
        raise UsageError(f"--blobs '{blobs}' is not a directory; give the dataset root its ./blob/... paths start from")
    ids = tuple(u.strip() for u in (workload or "").split(",") if u.strip())
    req = TraceRequest(definition, workloads, blobs, ids, trust)
    p, trace = prepare_trace(req, given | {k: v for k, v in others.items() if v}, cli_settings, scope)
    if trace.missing_blobs:
        say(err_console, trace.missing_blobs)
    return p, trace


def _say_cuda_graph_unavailable(dev) -> None:
    """--cuda-graph on a device without CUDA graphs: said once here (each record says it too)."""
    from attnbench.measure.graphs import unavailable_reason

    why = unavailable_reason(dev, "fwd")
    if why:
        say(err_console, f"--cuda-graph: unavailable: {why}")


def _say_interrupted(interrupted, records: list[dict], out: Path) -> None:
    """One line: which signal stopped the run, what was kept and how to resume."""
    import signal

    how = " (the case in flight was abandoned)" if interrupted.abandoned else ""
    try:  # after SIGHUP the terminal may be gone: the records are kept either way
        kept = (
            f"{len(records)} record{'s' * (len(records) != 1)} kept in {out}; resume with the same command "
            f"plus --out {out} --resume"
            if records
            else f"no case finished, nothing written to {out}"
        )
        say(err_console, f"interrupted by {signal.Signals(interrupted.signum).name}{how}: {kept}")
    except OSError:
        pass
