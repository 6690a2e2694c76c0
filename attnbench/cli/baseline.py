"""`attnbench baseline save|path`: the gate's baselines, one per environment (exit codes:
cli/gate_common.py, docs/ci.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from attnbench.cli import gate_common as G
from attnbench.cli import options as O
from attnbench.core.errors import UsageError

app = typer.Typer(help="Baselines for the regression gate.", no_args_is_help=True)


@app.command("save")
def save(
    suite: G.GateSuite = "ci",
    backend_file: O.BackendFile = None,
    device: O.Device = "auto",
    threads: O.Threads = None,
    runs: Annotated[int, typer.Option("--runs", metavar="N",
                                      help="Runs of the suite kept in the baseline (its run-to-run spread).")] = 3,
    out: O.Out = None,
    force: O.Force = False,
) -> None:
    """Run a suite and save it, atomically, as the baseline of this environment.

    --out: the baseline file (default results/baselines/<environment>.jsonl, replaced: a
    baseline is meant to be renewed); an --out given must not exist unless --force.

    Examples:

      attnbench baseline save --suite ci

      attnbench baseline save --suite ci --threads 1 --runs 5

      attnbench baseline save --suite ci --out results/baselines/ci-runner.jsonl

      attnbench baseline save --suite my-kernel.toml --backend-file my_kernel.py
    """
    from attnbench.gate.runs import (
        BASELINE_DIR,
        current_env,
        env_id,
        load_suite_settings,
        resolve_settings,
        save_baseline,
    )

    with G.usage_exit_3():
        if runs < 1:
            raise UsageError(f"--runs must be at least 1 (got {runs})")
        if out is not None and out.is_dir():
            raise UsageError(f"--out '{out}' is a directory; give a file such as {out}/baseline.jsonl")
        if out is not None and out.is_file() and not force:
            raise UsageError(f"'{out}' already exists; add --force to overwrite it")
        sweeps, settings = load_suite_settings(suite, device, threads, backend_file)
        settings, dev = resolve_settings(settings)
        target = out or BASELINE_DIR / f"{env_id(current_env(dev))}.jsonl"
    run = G.guard_run(lambda: save_baseline(sweeps, settings, target, G.err, ["attnbench", *sys.argv[1:]], runs))
    bad = [r for r in run.records if r["status"] in ("error", "oom", "timeout", "killed", "wrong")]
    print(f"baseline: {target} ({len(run.records) // runs} cases × {runs} runs)")
    if bad:
        G.err.print(f"warning: {len(bad)} cases failed in the baseline run; they will be reported as 'new'")


@app.command("path")
def path(
    device: O.Device = "auto",
    threads: O.Threads = None,
    directory: Annotated[Path, typer.Option("--dir", metavar="DIR", help="Where baselines live.")] = Path(
        "results/baselines"),
) -> None:
    """Print the path of this environment's baseline (whether or not it exists yet).

    Examples:

      attnbench baseline path --threads 1

      test -f "$(attnbench baseline path)" || attnbench baseline save --suite ci
    """
    from attnbench.gate.runs import current_env, env_id, resolve_settings
    from attnbench.run.settings import build

    with G.usage_exit_3():
        _, dev = resolve_settings(build(None, None, threads=threads, device=device))
        print(directory / f"{env_id(current_env(dev))}.jsonl")
