"""Commands of the performance-regression gate: compare, gate, baseline save, ab.

Exit codes (all four commands): 0 no regression, 1 at least one confirmed regression, 2 a
benchmark case failed in the current run, 3 a usage error, a missing or unreadable baseline, or
environments that differ. Usage problems exit 3 here (not attnbench's usual 2), so a CI job can
tell "the benchmarks broke" from "the gate was called wrong". See docs/ci.md.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from attnbench.core.errors import UsageError, say
from attnbench.core.results import ResultsError, atomic_write_text
from attnbench.core.safe_io import OutputError
from attnbench.gate.compare import EXIT_ERRORS, EXIT_USAGE, FORMATS, Options, Report, make_options

err = Console(stderr=True)

Threshold = Annotated[str, typer.Option(metavar="PCT",
                                        help="Regression threshold on the median ratio, e.g. 10% or 0.10.")]
Warn = Annotated[str, typer.Option(metavar="PCT", help="Changes within ±warn count as 'same'.")]
Metric = Annotated[str, typer.Option(metavar="METRIC",
                                     help="What decides the exit code: latency | memory | both (the other is shown).")]
Normalize = Annotated[str, typer.Option(metavar="HOW",
                                        help="none | gemm (in-run GEMM time) | a case, e.g. mha:sdpa:seq=1024.")]
Format = Annotated[str, typer.Option("--format", metavar="FORMAT",
                                                 help="stdout format: table | markdown | json | junit.")]
Outs = Annotated[
    Optional[list[Path]],
    typer.Option("--out", metavar="FILE",
                          help="Also write the report here; format by suffix: .md .xml .json .txt (repeatable)."),
]
Alpha = Annotated[float, typer.Option(help="Significance level of the Mann–Whitney test.")]
AllowEnv = Annotated[
    bool, typer.Option("--allow-env-mismatch", help="Compare results of different environments anyway.")
]
MemThreshold = Annotated[
    str, typer.Option("--mem-threshold", metavar="PCT", help="Peak-memory regression threshold (and at least 1 MiB).")
]
Suite = Annotated[str, typer.Option(metavar="SUITE", help="Suite name or .toml path.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")]
Threads = Annotated[
    Optional[int],
    typer.Option(
        help="CPU threads for torch (part of the environment: use the same "
        "for baseline and gate; 1 is far steadier on a shared CPU)."
    ),
]


@contextlib.contextmanager
def usage_exit_3():
    """Usage problems and unreadable results exit 3 with one line on stderr."""
    try:
        yield
    except (UsageError, ResultsError, OutputError) as e:
        say(err, str(e), "error:")
        raise typer.Exit(EXIT_USAGE) from None


def _options(threshold, warn, metric, normalize, alpha, mem_threshold, allow_env_mismatch, fmt, outs) -> Options:
    from attnbench.gate.render import SUFFIX_FORMATS

    if fmt not in FORMATS:
        raise UsageError(f"unknown --format '{fmt}'; accepted: {', '.join(FORMATS)}")
    for p in outs or []:
        if p.suffix not in SUFFIX_FORMATS:
            raise UsageError(f"cannot tell the format of --out '{p}'; accepted suffixes: {', '.join(SUFFIX_FORMATS)}")
        if not p.parent.is_dir():
            raise UsageError(f"cannot write --out '{p}': directory '{p.parent}' does not exist")
    return make_options(threshold, warn, metric, normalize, alpha, mem_threshold, allow_env_mismatch)


def emit(report: Report, fmt: str, outs: list[Path] | None) -> None:
    """Print the report, write the --out files, then exit with the report's code."""
    from attnbench.gate.render import RENDERERS, SUFFIX_FORMATS, headline

    sys.stdout.write(RENDERERS[fmt](report))
    sys.stdout.flush()
    for p in outs or []:
        atomic_write_text(p, RENDERERS[SUFFIX_FORMATS[p.suffix]](report))
    if report.incomparable:
        say(err, headline(report).partition(": ")[2], "error:")
    raise typer.Exit(report.exit_code)


def register(app: typer.Typer) -> None:
    baseline_app = typer.Typer(help="Baselines for the regression gate.", no_args_is_help=True)
    app.add_typer(baseline_app, name="baseline")

    @app.command()
    def compare(
        baseline: Annotated[Path, typer.Argument(metavar="BASELINE", help="Baseline results (JSONL).")],
        current: Annotated[Path, typer.Argument(metavar="CURRENT", help="Current results (JSONL).")],
        threshold: Threshold = "10%",
        warn: Warn = "5%",
        metric: Metric = "latency",
        normalize: Normalize = "none",
        fmt: Format = "table",
        out: Outs = None,
        alpha: Alpha = 0.002,
        allow_env_mismatch: AllowEnv = False,
        mem_threshold: MemThreshold = "5%",
    ) -> None:
        """Compare two results files case by case; exit 1 on a confirmed regression.

        Examples:

          attnbench compare results/baselines/cpu-amd-epyc-1a2b3c4d5e.jsonl results/run.jsonl

          attnbench compare base.jsonl cur.jsonl --threshold 5% --normalize gemm --format markdown

          attnbench compare base.jsonl cur.jsonl --metric both --out gate.md --out gate.xml
        """
        from attnbench.gate.compare import compare as run_compare
        from attnbench.gate.sides import build_side, load_run

        with usage_exit_3():
            o = _options(threshold, warn, metric, normalize, alpha, mem_threshold, allow_env_mismatch, fmt, out)
            base = build_side([load_run(baseline)], o.normalize)
            cur = build_side([load_run(current)], o.normalize)
        emit(run_compare(base, cur, o), fmt, out)

    @app.command()
    def gate(
        baseline: Annotated[Path, typer.Option(metavar="FILE|DIR",
                                               help="Baseline file, or a directory holding one per environment.")],
        suite: Suite = "ci",
        threshold: Threshold = "10%",
        warn: Warn = "5%",
        metric: Metric = "latency",
        normalize: Normalize = "none",
        fmt: Format = "table",
        out: Outs = None,
        alpha: Alpha = 0.002,
        allow_env_mismatch: AllowEnv = False,
        mem_threshold: MemThreshold = "5%",
        device: Device = "auto",
        threads: Threads = None,
        results: Annotated[
            Optional[Path], typer.Option(metavar="FILE",
                                         help="Where the run's results go (default results/gate-<time>.jsonl).")
        ] = None,
        rerun: Annotated[bool, typer.Option("--rerun/--no-rerun", help="Re-run suspect cases to confirm them.")] = True,
    ) -> None:
        """Run a suite, compare it with a baseline, re-run suspects, exit 1 on a confirmed regression.

        Examples:

          attnbench gate --suite ci --baseline results/baselines/

          attnbench gate --suite ci --baseline base.jsonl --format markdown --out gate.xml
        """
        from attnbench.gate.flow import gate_flow

        with usage_exit_3():
            o = _options(threshold, warn, metric, normalize, alpha, mem_threshold, allow_env_mismatch, fmt, out)
            plan = _gate_plan(suite, device, threads, baseline, o)
        report = _guard_run(lambda: gate_flow(*plan, o, results, rerun, err))
        emit(report, fmt, out)

    @baseline_app.command("save")
    def baseline_save(
        suite: Suite = "ci",
        device: Device = "auto",
        threads: Threads = None,
        runs: Annotated[int, typer.Option(help="Runs of the suite kept in the baseline (its run-to-run spread).")] = 3,
        out: Annotated[
            Optional[Path], typer.Option(metavar="FILE",
                                         help="Baseline file (default results/baselines/<environment>.jsonl).")
        ] = None,
    ) -> None:
        """Run a suite and save it, atomically, as the baseline of this environment.

        Examples:

          attnbench baseline save --suite ci

          attnbench baseline save --suite ci --threads 1 --runs 5

          attnbench baseline save --suite ci --out results/baselines/ci-runner.jsonl
        """
        from attnbench.gate.runs import (
            BASELINE_DIR,
            current_env,
            env_id,
            load_suite_settings,
            resolve_settings,
            save_baseline,
        )

        with usage_exit_3():
            if runs < 1:
                raise UsageError(f"--runs must be at least 1 (got {runs})")
            sweeps, settings = load_suite_settings(suite, device, threads)
            settings, dev = resolve_settings(settings)
            target = out or BASELINE_DIR / f"{env_id(current_env(dev))}.jsonl"
        run = _guard_run(
            lambda: save_baseline(sweeps, settings, target, err, ["attnbench", *sys.argv[1:]], runs)
        )
        bad = [r for r in run.records if r["status"] in ("error", "oom", "timeout", "killed")]
        print(f"baseline: {target} ({len(run.records) // runs} cases × {runs} runs)")
        if bad:
            err.print(f"warning: {len(bad)} cases failed in the baseline run; they will be reported as 'new'")

    @baseline_app.command("path")
    def baseline_path(
        device: Device = "auto",
        threads: Threads = None,
        directory: Annotated[Path, typer.Option("--dir", metavar="DIR",
                                                         help="Where baselines live.")] = Path("results/baselines"),
    ) -> None:
        """Print the path of this environment's baseline (whether or not it exists yet).

        Examples:

          attnbench baseline path --threads 1

          test -f "$(attnbench baseline path)" || attnbench baseline save --suite ci
        """
        from attnbench.gate.runs import current_env, env_id
        from attnbench.run.session import resolve_device

        with usage_exit_3():
            if threads is not None:
                if threads < 1:
                    raise UsageError(f"--threads must be at least 1 (got {threads})")
                import torch

                torch.set_num_threads(threads)
            print(directory / f"{env_id(current_env(resolve_device(device)))}.jsonl")

    @app.command()
    def ab(
        ref: Annotated[str, typer.Option(metavar="REV",
                                         help="The git revision to compare the working tree with (baseline side).")],
        suite: Suite = "ci",
        rounds: Annotated[int, typer.Option(help="Interleaved rounds (each runs both sides once).")] = 3,
        threshold: Threshold = "10%",
        warn: Warn = "5%",
        metric: Metric = "latency",
        normalize: Normalize = "none",
        fmt: Format = "table",
        out: Outs = None,
        alpha: Alpha = 0.002,
        mem_threshold: MemThreshold = "5%",
        device: Device = "auto",
        threads: Threads = None,
        seed: Annotated[int, typer.Option(help="Seed of the per-round order.")] = 0,
        confirm_rounds: Annotated[
            Optional[int],
            typer.Option(
                "--confirm-rounds",
                help="Extra rounds of the regressions only, to confirm them (default: --rounds; 0: none).",
            ),
        ] = None,
        runs_dir: Annotated[
            Optional[Path],
            typer.Option("--runs-dir", metavar="DIR",
                                       help="Keep each round's results here (default: a temporary directory)."),
        ] = None,
    ) -> None:
        """Same-job A/B: a git revision against the working tree, interleaved rounds, then compare;
        regressions get extra interleaved rounds and must show again to fail.

        Examples:

          attnbench ab --ref origin/main --suite ci

          attnbench ab --ref HEAD~1 --rounds 5 --format markdown --out ab.xml
        """
        from attnbench.gate.flow import ab_flow

        with usage_exit_3():
            o = _options(threshold, warn, metric, normalize, alpha, mem_threshold, False, fmt, out)
            if rounds < 1:
                raise UsageError(f"--rounds must be at least 1 (got {rounds})")
            if threads is not None and threads < 1:
                raise UsageError(f"--threads must be at least 1 (got {threads})")
            if confirm_rounds is not None and confirm_rounds < 0:
                raise UsageError(f"--confirm-rounds must be 0 or more (got {confirm_rounds})")
        report = _guard_run(
            lambda: ab_flow(ref, suite, rounds, device, threads, runs_dir, seed, o, err, confirm_rounds)
        )
        emit(report, fmt, out)


def _gate_plan(suite: str, device: str, threads: int | None, baseline: Path, o: Options):
    """Load everything the gate needs before spending time on a run; fail fast (exit 3)."""
    from attnbench.gate.runs import current_env, load_suite_settings, resolve_baseline, resolve_settings
    from attnbench.gate.sides import build_side, describe_differences, env_differences, load_run

    sweeps, settings = load_suite_settings(suite, device, threads)
    settings, dev = resolve_settings(settings)
    env = current_env(dev)
    base_run = load_run(resolve_baseline(baseline, env))
    diff = env_differences(base_run.header.get("env") or {}, env)
    if diff and not o.allow_env_mismatch:
        raise UsageError(
            f"the baseline {base_run.path} was measured in another environment: "
            f"{describe_differences(diff)}; save a baseline here or pass --allow-env-mismatch"
        )
    return build_side([base_run], o.normalize), sweeps, settings


def _guard_run(fn):
    """Run benchmarks: usage problems found late exit 3, a failed run 2, Ctrl-C 130."""
    from attnbench.gate.ab import RunFailed

    with usage_exit_3():
        try:
            return fn()
        except RunFailed as e:
            say(err, str(e), "error:")
            raise typer.Exit(EXIT_ERRORS) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
