"""A benchmark run: expand the sweeps, start the worker, write the results file, show progress.

The CLI's `run` is a thin call of :func:`run_sweep`.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import results
from .errors import UsageError
from .measure import env as env_mod
from .runner import RunConfig, Worker, run_cases
from .rounds import merge_rounds, round_order
from .sweep import Case, Sweep, expand


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
    if out.exists() and not (resume or force):
        raise UsageError(f"'{out}' already exists; add --resume to continue it or --force to overwrite it")


@dataclass
class Interrupt:
    """First Ctrl-C: stop after the current case. Second: stop now."""

    requested: bool = False

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def run_sweep(sweeps: list[Sweep], device: torch.device, out: Path, *, time_budget: float,
              threads: int | None, resume: bool = False, force: bool = False,
              console: Console | None = None, command: list[str] | None = None,
              profile_dir: Path | None = None, shard: tuple[int, int] | None = None,
              world_size: int | None = None, executor: str = "local",
              address: str | None = None, rounds: int = 1, inputs: str = "randn",
              reference_limit: int | None = None, sample_time: float | None = None) -> tuple[list[dict], bool]:
    """Run every case (`rounds` times, interleaved: see rounds.py); returns (records of this
    file, interrupted)."""
    console = console or Console(stderr=True)
    if rounds > 1 and (executor != "local" or world_size):
        raise UsageError("--rounds runs cases in one local worker: it does not combine with --executor ray "
                         "or --world-size")
    check_out(out, resume, force)
    cases = expand(sweeps, device)
    if shard is not None:
        from .executors import shard as take_shard

        cases = take_shard(cases, *shard)
    if world_size:
        from .distributed.variant import with_world_size

        cases = with_world_size(cases, world_size, device)
    done: list[dict] = []
    if threads:
        torch.set_num_threads(threads)
    env = env_mod.capture(device)
    if resume and out.exists():
        header, done = results.read(out)
        _check_same_env(out, header.get("env") or {}, env)
        ids = {r["case_id"] for r in done}
        cases = [c for c in cases if _case_id(c, device) not in ids]
        console.print(f"resuming {out}: {len(done)} cases recorded, {len(cases)} to run")
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(exist_ok=True)  # only the default results/ can be missing here
    cfg = RunConfig(device=device, time_budget=time_budget, threads=threads,
                    profile_dir=str(profile_dir) if profile_dir else None, inputs=inputs,
                    reference_limit=reference_limit)
    if sample_time is not None:  # a suite's cap on timed samples per case (the quick suite: 0.5 s)
        cfg = replace(cfg, policy=replace(cfg.policy, max_time=float(sample_time)))
    worker = Worker(cfg)
    records: list[dict] = list(done)
    stop = Interrupt()
    old = signal.signal(signal.SIGINT, stop)
    try:
        runnable = [c for c in cases if c.status is None]
        dtypes = tuple(sorted({c.problem.dtype for c in runnable}))
        if resume and done and header.get("refs") and all(d in header["refs"]["gemm"] for d in dtypes):
            refs = worker.refs = header["refs"]  # the header's rates stay the ones records use
        else:
            refs = worker.measure_refs(dtypes) if runnable else None
        header = results.make_header(command or sys.argv, env, refs)
        with results.Writer(out, header, append=resume and out.exists()) as writer, _progress(console) as prog:
            task = prog.add_task("attnbench", total=len(cases) * rounds)
            if executor == "ray":
                from .executors import run_cases_ray

                def on_ray_record(r: dict) -> None:
                    writer.write(r)
                    records.append(r)
                    prog.advance(task)

                run_cases_ray(cases, cfg, address, on_record=on_ray_record, refs=refs)
                cases = []
            per_case: list[list[dict]] = [[] for _ in cases]
            written: set[int] = set()
            for r in range(rounds):
                for i in round_order(range(len(cases)), r):
                    if stop.requested:
                        break
                    if i in written:  # not ok in an earlier round: recorded as such
                        continue
                    case = cases[i]
                    prog.update(task, description=f"{case.variant}/{case.backend} {case.problem.short()} "
                                                  f"{case.problem.mode}" + (f" · round {r + 1}/{rounds}" if rounds > 1 else ""))
                    run_cases([case], cfg, worker, per_case[i].append, refs)
                    if per_case[i][-1]["status"] != "ok" or len(per_case[i]) == rounds:
                        rec = merge_rounds(per_case[i], rounds)
                        writer.write(rec)
                        records.append(rec)
                        written.add(i)
                        prog.advance(task, rounds - r)
                    else:
                        prog.advance(task)
    finally:
        signal.signal(signal.SIGINT, old)
        worker.close()
    return records, stop.requested


def _check_same_env(out: Path, old: dict, new: dict) -> None:
    """A resumed file must be finished on the environment it was started on."""
    a, b = env_mod.fingerprint(old) | {"attnbench": old.get("attnbench")}, \
        env_mod.fingerprint(new) | {"attnbench": new.get("attnbench")}
    diff = [f"{k}: {a[k]} -> {b[k]}" for k in a if a[k] != b[k]]
    if diff:
        raise UsageError(f"cannot resume '{out}': it was measured on another environment ({'; '.join(diff)}); "
                         f"use a new --out")


def _case_id(case: Case, device: torch.device) -> str:
    return results.case_id(case.problem.as_dict(), case.variant, case.backend, device.type)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}", style="cyan"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True)
