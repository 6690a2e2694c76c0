"""`attnbench gpu-check`: the device check in one command (run/gpucheck.py has the steps, their
prediction model and the runner)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from attnbench.cli import options as O
from attnbench.core.errors import UsageError


def gpu_check(
    dry_run: O.DryRun = False,
    fmt: O.Format = None,
    json_out: O.Json = False,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out-dir", metavar="DIR", help="Where each step's output, steps.jsonl and summary.json go "
                                         "(default results/gpu-check/<date>-<time>).")] = None,
    cap: Annotated[float, typer.Option("--cap", metavar="SECONDS",
                                       help="Time cap of the whole check; each step's timeout leaves the "
                                            "later steps their predicted time.")] = 540.0,
) -> None:
    """On an NVIDIA GPU: check every Triton kernel (`check --device cuda`, sinks and soft-cap forward
    and backward), run the reference sweep into results/reference/<gpu>-<date>.jsonl and splice its
    report into docs/gpu.md. Each step's failure is recorded and the next step still runs.
    Exit code 1 when a step did not end ok; 2 without a GPU (except --dry-run, which lists the steps
    and their predicted seconds and works without a GPU). --json: the plan or the step outcomes.

    Examples:

      attnbench gpu-check --dry-run --json

      attnbench gpu-check --out-dir /tmp/gpu-check
    """
    from attnbench.core.schema import positive_finite
    from attnbench.run import gpucheck

    cap = positive_finite(cap, "--cap", " of seconds")
    json_out = O.output_format(fmt, json_out) == "json"
    today = date.today().isoformat()
    if dry_run:
        plan = gpucheck.dry_run(gpucheck.plan(date=today), cap)
        if json_out:
            print(json.dumps(plan, indent=1))
            return
        for s in plan["steps"]:
            print(f"{s['predicted_seconds']:7.1f} s  {s['name']:<20} {s['model']}")
        print(f"{plan['predicted_seconds']:7.1f} s  total (cap {cap:g} s; {plan['note']})")
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError("gpu-check needs an NVIDIA GPU (torch.cuda.is_available() is False here); "
                         "`attnbench gpu-check --dry-run` lists the steps")
    gpu = gpucheck.gpu_slug(torch.cuda.get_device_name(0))
    steps = gpucheck.plan(gpu, today)
    Path("results/reference").mkdir(parents=True, exist_ok=True)
    from datetime import datetime

    stamp = datetime.now().strftime("%Y-%m-%d-%H%M%S")  # a rerun the same day keeps the earlier log
    results = gpucheck.run_all(steps, out_dir or Path("results/gpu-check") / stamp, cap,
                               echo=(lambda *_: None) if json_out else print)
    if json_out:
        print(json.dumps(results, indent=1))
    else:
        print(f"{sum(r['status'] == 'ok' for r in results)} of {len(results)} steps ok")
    if any(r["status"] != "ok" for r in results):
        raise typer.Exit(1)
