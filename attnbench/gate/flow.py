"""The two gate procedures behind the CLI.

gate: run the suite once, compare with the baseline; then re-run the suspects (cases whose
gated verdict is regression or inconclusive) once, in a fresh worker, and decide them on all
their samples merged — a regression stands only if the re-run by itself also shows it
(compare.confirm). Two independent looks cut the false alarms that one slow spell of a shared
machine causes, at the price of one re-run of the few suspect cases.

ab: interleaved rounds of a git revision and the working tree (gate/ab.py), each side's samples
merged across rounds, then compared with the revision as the baseline.
"""

from __future__ import annotations

import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from rich.console import Console

from attnbench.core.errors import UsageError
from attnbench.gate.compare import Options, Report, compare, confirm
from attnbench.gate.runs import run_sweeps, sweep_of
from attnbench.gate.sides import Side, build_side, case_key, find_reference

SUSPECT = ("regression", "inconclusive")


def default_results() -> Path:
    Path("results").mkdir(exist_ok=True)
    return Path("results") / time.strftime("gate-%Y%m%d-%H%M%S.jsonl")


def gate_flow(
    base: Side,
    sweeps,
    settings,
    o: Options,
    results: Path | None,
    rerun: bool,
    console: Console,
) -> Report:
    out = results or default_results()
    cmd = ["attnbench", *sys.argv[1:]]
    console.print(f"gate: running the suite → {out}", markup=False)
    run1 = run_sweeps(sweeps, settings, out, console, cmd)
    first = compare(base, build_side([run1], o.normalize), o)
    suspects = [c.key for c in first.cases if c.verdict in SUSPECT]
    if first.incomparable or not rerun or not suspects:
        return first
    records = {case_key(r): r for r in run1.records}
    again = list(suspects)
    if o.normalize not in ("none", "gemm"):  # the re-run needs its own reference case
        ref_key = case_key(find_reference(run1, o.normalize))
        again += [ref_key] if ref_key not in again else []
    console.print(f"gate: re-running {len(suspects)} suspect case(s) to confirm them")
    out2 = out.with_name(out.stem + "-rerun.jsonl")
    run2 = run_sweeps([sweep_of(records[k]) for k in again], settings, out2, console, cmd)
    lost = set(again) - {case_key(r) for r in run2.records}
    if lost:
        console.print(f"warning: {len(lost)} re-run case(s) did not come back with the same identity")
    merged = compare(base, build_side([run1, run2], o.normalize), o)
    alone = compare(base, build_side([run2], o.normalize), o)
    return confirm(first, merged, alone, set(suspects))


def suite_file(suite: str) -> Path:
    """The suite's .toml as an absolute path (both sides of an A/B read the same file)."""
    from attnbench.run.plan import load_suite, suite_names

    load_suite(suite)  # raises a UsageError naming the accepted suites
    p = Path(suite)
    if p.suffix == ".toml" or p.exists():
        return p.resolve()
    if suite not in suite_names():
        raise UsageError(f"unknown suite '{suite}'")
    return Path(str(resources.files("attnbench.suites").joinpath(f"{suite}.toml"))).resolve()


def ab_compare(sides: list, suite: Path, rounds: int, how, o: Options, confirm_rounds: int) -> Report:
    """Interleaved rounds of [baseline side, current side], compared; then the regressions
    alone get `confirm_rounds` more interleaved rounds and stand only if those rounds by
    themselves show the regression too (compare.confirm), as in the gate."""
    from attnbench.gate.ab import interleave
    from attnbench.gate.runs import suite_text
    from attnbench.run.plan import load_suite

    base, cur = sides[0].name, sides[1].name
    runs = interleave(sides, suite, rounds, how)
    first = compare(build_side(runs[base], o.normalize), build_side(runs[cur], o.normalize), o)
    suspects = [c.key for c in first.cases if c.verdict == "regression"]
    if first.incomparable or not suspects or confirm_rounds < 1:
        return first
    records = {case_key(r): r for r in runs[cur][0].records}
    again = list(suspects)
    if o.normalize not in ("none", "gemm"):
        ref_key = case_key(find_reference(runs[cur][0], o.normalize))
        again += [ref_key] if ref_key not in again else []
    path = how.runs_dir / "suspects.toml"
    path.write_text(suite_text([records[k] for k in again], load_suite(str(suite))[1]), encoding="utf-8")
    how.log(f"confirming {len(suspects)} regression(s) with {confirm_rounds} more round(s)")
    more = interleave(sides, path, confirm_rounds, how, tag="confirm-")
    merged = compare(
        build_side(runs[base] + more[base], o.normalize), build_side(runs[cur] + more[cur], o.normalize), o
    )
    alone = compare(build_side(more[base], o.normalize), build_side(more[cur], o.normalize), o)
    return confirm(first, merged, alone, set(suspects))


def ab_flow(
    ref: str,
    suite: str,
    rounds: int,
    device: str,
    threads: int | None,
    runs_dir: Path | None,
    seed: int,
    o: Options,
    console: Console,
    confirm_rounds: int | None = None,
    backend_files: tuple[Path, ...] = (),
) -> Report:
    import random

    from attnbench.gate.ab import Rounds, repo_root, revision_sides
    from attnbench.run.session import resolve_device

    resolve_device(device)  # validate before any run
    if backend_files:  # a file that does not load fails here, once, before any round
        from attnbench.run.start import load_backends

        load_backends([str(f) for f in backend_files])
    path = suite_file(suite)
    repo = repo_root(Path.cwd())
    here = Path(sys.modules["attnbench"].__file__).resolve()
    if repo not in here.parents:
        console.print(
            f"warning: attnbench is imported from {here.parent}, not from the checkout {repo}; "
            "the 'working tree' side runs that installation"
        )
    confirm_rounds = rounds if confirm_rounds is None else confirm_rounds
    with (tempfile.TemporaryDirectory(prefix="attnbench-ab-runs-") as tmp,
          revision_sides(repo, ref, tuple(backend_files)) as sides):
        where = runs_dir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        how = Rounds(device, threads, where, random.Random(seed), console.print)
        return ab_compare(sides, path, rounds, how, o, confirm_rounds)
