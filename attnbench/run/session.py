"""A benchmark run: expand the sweeps, start the worker, write the results file, show progress.

The CLI's `run` is a thin call of :func:`run_sweep`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console

from attnbench.core import repro, results
from attnbench.core.errors import UsageError
from attnbench.core.safe_io import STOP_SIGNALS, signals_deferred
from attnbench.measure import env as env_mod
from attnbench.run.forecast import Eta, Plan, Startup, fmt_duration, forecast
from attnbench.run.plan import Case, Sweep, expand
from attnbench.run.rounds import merge_rounds, round_order
from attnbench.run.settings import RunSettings
from attnbench.run.view import RunView
from attnbench.run.worker import RunConfig, Worker, case_key, run_cases
from attnbench.variants import registry


def resolve_device(name: str) -> torch.device:
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is visible here; accepted: auto, cpu")
        return torch.device("cuda")
    raise UsageError(f"unknown device '{name}'; accepted: auto, cpu, cuda")


DEFAULT_DIR = Path("results")


def default_out() -> Path:
    """results/run-<time>.jsonl; the folder is made only once the run starts."""
    return DEFAULT_DIR / time.strftime("run-%Y%m%d-%H%M%S.jsonl")


def check_out(out: Path, resume: bool, force: bool) -> None:
    if not out.parent.exists() and out.parent != DEFAULT_DIR:
        raise UsageError(f"cannot write '{out}': directory '{out.parent}' does not exist")
    if out.exists() and out.is_dir():
        raise UsageError(f"--out '{out}' is a directory; give a file path such as {out}/run.jsonl")
    if out.is_file() and not (resume or force):  # a device or a pipe is written in place, not replaced
        raise UsageError(f"'{out}' already exists; add --resume to continue it or --force to overwrite it")


@dataclass
class Interrupt:
    """SIGINT (Ctrl-C) and SIGHUP: stop after the current case; SIGTERM (CI runners, `timeout`):
    abandon the current case at once. A second signal of any kind abandons the case in flight.
    `signum` is the first signal received (0: none); `abandoned` says a case was cut short."""

    signum: int = 0
    abandoned: bool = False

    @property
    def requested(self) -> bool:
        return self.signum != 0

    def __bool__(self) -> bool:
        return self.requested

    def __call__(self, signum, frame):
        first = not self.signum
        self.signum = self.signum or signum
        if not first or signum == signal.SIGTERM:
            raise KeyboardInterrupt



@dataclass(frozen=True)
class Scope:
    """Which cases of the sweeps a run takes and where they run: `shard` (K, N) of them,
    distributed ones at `world_size` ranks, on `executor` (local | ray at `address`), and
    `extra` cases already expanded (run --model: run/models.py), run after the sweeps'."""

    shard: tuple[int, int] | None = None
    world_size: int | None = None
    executor: str = "local"
    address: str | None = None
    extra: tuple[Case, ...] = ()


def run_sweep(
    sweeps: list[Sweep],
    settings: RunSettings,
    out: Path,
    *,
    scope: Scope = Scope(),
    resume: bool = False,
    force: bool = False,
    profile_dir: Path | None = None,
    command: list[str] | None = None,
    annotate: Callable[[dict], dict] | None = None,
    console: Console | None = None,
    view: RunView | None = None,
) -> tuple[list[dict], Interrupt]:
    """Run every case (`settings.rounds` times, interleaved: see rounds.py); returns (records
    of this file, the Interrupt: false when the run was not stopped by a signal, else its signum
    and whether a case in flight was abandoned).

    The results file is locked for the whole run (safe_io.hold_lock: a second writer fails at
    once); a write that fails raises safe_io.OutputError after cutting the file back to its last
    complete record; a run that ends before its first record leaves no file (and `--force`
    replaces the old file only once the new one has a record). `annotate`: adds fields to each
    record before it is written (the model's: `model`, `layers`, the KV-cache arithmetic).

    `view` (default: a progress bar on `console`) is shown the plan (run/forecast.py) once the
    in-run references are measured, before anything is written; it may raise to stop there."""
    from attnbench.core.safe_io import hold_lock

    console = console or Console(stderr=True)
    device = resolve_device(settings.device)
    check_rounds(settings.rounds, scope)
    check_out(out, resume, force)
    cases = runnable_cases(sweeps, device, scope)
    settings = resolved(settings, device)
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(exist_ok=True)  # only the default results/ can be missing here
    with hold_lock(out):
        check_out(out, resume, force)  # again, now that no other writer can change it
        cfg = make_config(device, settings, profile_dir)
        return _run_locked(cases, cfg, settings, out, scope, resume, command, annotate, view or RunView(console),
                           console)


def resolved(settings: RunSettings, device: torch.device) -> RunSettings:
    """The settings as the run uses them: torch's threads set (and recorded as a number), the
    device as resolved."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return settings.with_(threads=torch.get_num_threads(), device=device.type)


def check_rounds(rounds: int, scope: Scope) -> None:
    if rounds > 1 and (scope.executor != "local" or scope.world_size):
        raise UsageError(
            "--rounds runs cases in one local worker: it does not combine with --executor ray or --world-size"
        )


def sweep_cases(sweeps: list[Sweep], device: torch.device, scope: Scope = Scope()) -> list[Case]:
    """The cases of the sweeps then the scope's extra cases, the scope's shard of them,
    distributed ones at its `world_size` ranks."""
    cases = expand(sweeps, device) + list(scope.extra)
    if scope.shard is not None:
        from attnbench.run.executors import shard as take_shard

        cases = take_shard(cases, *scope.shard)
    if scope.world_size:
        from attnbench.run.plan import with_world_size

        cases = with_world_size(cases, scope.world_size, device)
    return cases


def runnable_cases(sweeps: list[Sweep], device: torch.device, scope: Scope = Scope()) -> list[Case]:
    """sweep_cases, refused (UsageError, before any work) when not one of them can run here: the
    values given are ones no case can use (e.g. --kv-heads that divide no head count)."""
    cases = sweep_cases(sweeps, device, scope)
    why = nothing_runnable(cases)
    if why:
        raise UsageError(why)
    return cases


def nothing_runnable(cases: list) -> str | None:
    """Why no case of a run can run (every one decided unsupported/unavailable before work),
    as one line naming the most common reason; None when at least one case runs."""
    if not cases or any(c.status is None for c in cases):
        return None
    reasons: dict[str, int] = {}
    for c in cases:
        reasons[c.reason or c.status] = reasons.get(c.reason or c.status, 0) + 1
    top = max(reasons, key=reasons.get)
    more = f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else ""
    return f"no case can run: {len(cases)} cases, none runnable here; e.g. {top}{more}"


def make_config(device: torch.device, settings: RunSettings, profile_dir: Path | None = None) -> RunConfig:
    """The worker's configuration for `settings` on `device`."""
    cfg = RunConfig(
        device=device,
        time_budget=settings.time_budget,
        threads=settings.threads,
        profile_dir=str(profile_dir) if profile_dir else None,
        inputs=settings.inputs,
        reference_limit=settings.reference_limit,
        keep_throttled=settings.keep_throttled,
        cuda_graph=settings.cuda_graph,
        backend_files=settings.backend_files,
    )
    if settings.sample_time is not None:  # a suite's cap on timed samples per case (the quick suite: 0.5 s)
        cfg = replace(cfg, policy=replace(cfg.policy, max_time=float(settings.sample_time)))
    return cfg


def plan_sweep(sweeps: list[Sweep], settings: RunSettings, scope: Scope = Scope()) -> tuple[Plan, float]:
    """The plan of a run without running it (`run --dry-run`): the in-run references come from the
    cache of an earlier run or plan in this environment (measure/refs_cache.py), else are measured
    here, in this process (as the worker would), and cached; returns (plan, seconds spent here
    measuring references: 0 when cached)."""
    from attnbench.measure import refs as refs_mod
    from attnbench.measure import refs_cache

    own = process_age_s()  # this command's start (interpreter, imports, options): the run's too
    device = resolve_device(settings.device)
    check_rounds(settings.rounds, scope)
    cases = runnable_cases(sweeps, device, scope)
    settings = resolved(settings, device)
    cfg = make_config(device, settings)
    dtypes = tuple(sorted({c.problem.dtype for c in cases if c.status is None}))
    if not dtypes:
        return forecast(cases, cfg, None, settings.rounds), 0.0
    env = env_mod.capture(device)
    cached = refs_cache.load(env, dtypes)
    if cached is not None:
        refs, took, age = cached
        note = f"references cached {fmt_duration(age)} ago"
        startup = Startup(own + refs_cache.startup_seconds(env, dtypes, took), note)
        return forecast(cases, cfg, refs, settings.rounds, startup), 0.0
    t0 = time.perf_counter()
    refs = refs_mod.measure(device, dtypes)
    took = time.perf_counter() - t0
    refs_cache.store(env, refs, took)
    note = f"references measured here in {fmt_duration(took)}"
    startup = Startup(own + refs_cache.startup_seconds(env, dtypes, took), note)
    return forecast(cases, cfg, refs, settings.rounds, startup), took


def process_age_s() -> float:
    """Seconds since this process started (Linux: /proc/self/stat's start time against
    /proc/uptime, 10 ms resolution); 0 where that cannot be read."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _measure_and_cache_refs(worker: Worker, dtypes: tuple[str, ...], env: dict) -> dict:
    """The worker's in-run references (starting the worker), kept in the references cache with the
    seconds from the worker's start to its references: the start-up a plan of this run predicts."""
    from attnbench.measure import refs_cache

    t0 = time.perf_counter()
    refs = worker.measure_refs(dtypes)
    refs_cache.store(env, refs, None, startup_s=time.perf_counter() - t0)
    return refs


def _run_locked(
    cases: list[Case],
    cfg: RunConfig,
    settings: RunSettings,
    out: Path,
    scope: Scope,
    resume: bool,
    command: list[str] | None,
    annotate: Callable[[dict], dict] | None,
    view: RunView,
    console: Console,
) -> tuple[list[dict], Interrupt]:
    from attnbench.run.rounds import RoundJournal

    device, rounds = cfg.device, settings.rounds
    env = env_mod.capture(device)
    done: list[dict] = []
    header: dict = {}
    if resume and out.exists():
        header, done = results.read(out)
        _check_same_env(out, header.get("env") or {}, env)
        ids = {r["case_id"] for r in done}
        cases = [c for c in cases if case_key(c, device, cfg.threads) not in ids]
        console.print(f"resuming {out}: {len(done)} cases recorded, {len(cases)} to run", markup=False, highlight=False)
    journal = RoundJournal(out, rounds, resume)
    worker = Worker(cfg)
    records: list[dict] = list(done)
    stop = Interrupt()
    old = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    ray_started = False
    try:
        if scope.executor == "ray":
            from attnbench.run.executors import connect_ray

            ray_started = connect_ray(scope.address)
        runnable = [c for c in cases if c.status is None]
        dtypes = tuple(sorted({c.problem.dtype for c in runnable}))
        if resume and done and header.get("refs") and all(d in header["refs"]["gemm"] for d in dtypes):
            refs = worker.refs = header["refs"]  # the header's rates stay the ones records use
        else:
            refs = _measure_and_cache_refs(worker, dtypes, env) if runnable else None
        header = results.make_header(command or sys.argv, env, refs, registry.describe(c.variant for c in cases),
                                     settings.header())
        plan = forecast(cases, cfg, refs, rounds)
        _show_plan(view, plan, old, stop)
        eta = Eta(plan)
        with results.Writer(out, header, append=resume and out.exists(), discard_empty=True) as writer, view:
            view.begin(len(cases) * rounds, eta.remaining() if refs else None)

            def keep(rec: dict) -> None:
                rec = annotate(rec) if annotate else rec
                rec = rec | {"repro": repro.command(rec, settings.header())}  # the command that reruns it
                with signals_deferred():  # the file and the records this run reports agree
                    writer.write(rec)
                    records.append(rec)
                view.finished(rec)

            if scope.executor == "ray":
                from attnbench.run.executors import run_cases_ray

                def ray_record(rec: dict) -> None:
                    eta.done(rec["case_id"], rec.get("wall_s"), whole_case=True)
                    view.progressed(1, eta.remaining())
                    keep(rec)

                run_cases_ray(cases, cfg, scope.address, on_record=ray_record, refs=refs)
                cases = []
            _rounds_loop(cases, cfg, worker, refs, rounds, journal, keep, stop, view, eta, device)
        if not stop.requested:
            journal.finish()
    except KeyboardInterrupt:  # a second signal, or SIGTERM: the case in flight is abandoned
        stop.abandoned = True
        stop.signum = stop.signum or signal.SIGINT
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        worker.close()
        journal.close()
        if ray_started:
            import ray

            ray.shutdown()
    return records, stop


def _show_plan(view: RunView, plan: Plan, handlers: dict, stop: Interrupt) -> None:
    """view.plan(plan) with the signal handlers the run started with (a confirmation prompt
    must stop at Ctrl-C), then the run's own again."""
    for s, h in handlers.items():
        signal.signal(s, h)
    try:
        view.plan(plan)
    finally:
        for s in handlers:
            signal.signal(s, stop)


def _rounds_loop(
    cases: list[Case],
    cfg: RunConfig,
    worker: Worker,
    refs,
    rounds: int,
    journal,
    keep,
    stop: Interrupt,
    view: RunView,
    eta: Eta,
    device: torch.device,
) -> None:
    """Each round of each case: journaled (rounds > 1), merged and kept once the case is done."""
    ids = [case_key(c, device, cfg.threads) for c in cases]
    per_case: list[list[dict]] = [list(journal.done.get(cid, [])) for cid in ids]
    for cid, p in zip(ids, per_case):
        for _ in p:
            eta.done(cid, None)
    view.progressed(sum(len(p) for p in per_case), eta.remaining() if refs else None)
    for r in range(rounds):
        for i in round_order(range(len(cases)), r):
            if stop.requested:
                return
            if len(per_case[i]) > r:  # done in an earlier run (journal)
                continue
            if per_case[i] and per_case[i][-1]["status"] != "ok":  # not ok in an earlier round: kept
                continue
            case = cases[i]
            view.running(
                f"{case.variant}/{case.backend} {case.problem.short()} "
                f"{case.problem.mode}" + (f" · round {r + 1}/{rounds}" if rounds > 1 else ""),
            )
            run_cases([case], cfg, worker, per_case[i].append, refs)
            final = per_case[i][-1]["status"] != "ok" or len(per_case[i]) == rounds
            eta.done(ids[i], per_case[i][-1].get("wall_s"), whole_case=final)
            if final:  # progress first: a view showing the record shows the ETA after it
                view.progressed(rounds - r, eta.remaining() if refs else None)
                keep(merge_rounds(per_case[i], rounds))
            else:
                journal.add(ids[i], per_case[i][-1])
                view.progressed(1, eta.remaining() if refs else None)


def _check_same_env(out: Path, old: dict, new: dict) -> None:
    """A resumed file must be finished on the environment it was started on."""
    a, b = (
        env_mod.fingerprint(old) | {"attnbench": old.get("attnbench")},
        env_mod.fingerprint(new) | {"attnbench": new.get("attnbench")},
    )
    diff = [f"{k}: {a[k]} -> {b[k]}" for k in a if a[k] != b[k]]
    if diff:
        raise UsageError(
            f"cannot resume '{out}': it was measured on another environment ({'; '.join(diff)}); use a new --out"
        )

