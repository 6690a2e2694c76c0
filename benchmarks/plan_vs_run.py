"""How well does the plan predict a run? Runs `attnbench run ... --dry-run --json` (the plan), then
the same run for real, and prints per case the predicted and measured wall time and peak memory
with their ratios, then the whole run's predicted and measured wall time.

    python benchmarks/plan_vs_run.py -- --variants mha,flash --seq 512,1k --time-budget 2
    python benchmarks/plan_vs_run.py --keep out.jsonl -- --suite quick

Everything after `--` is passed to `attnbench run` unchanged. The real run's wall time is the
whole process (imports, worker start, references, every case, writing); a case's measured time is
its record's `wall_s` (setup, timing loop, memory pass, oracle), which leaves out the per-case
overhead outside the worker's case (inputs, messages, the parent's bookkeeping): the gap between
the sum of the cases and the whole run shows it.

Honest limits: timing ratios describe the machine the script ran on at that moment (say whether it
was loaded); memory ratios are nearly deterministic. The plan's references come from the cache
when a recent run or plan left them (measure/refs_cache.py), as a user's second plan would.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _attnbench(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "attnbench", *args], capture_output=True, text=True, cwd=ROOT)
    return r, time.perf_counter() - t0


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.1f}"


def _ratio(measured, predicted) -> str:
    return "-" if not measured or not predicted else f"{measured / predicted:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="keep the real run's results file here")
    ap.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then `attnbench run` options")
    a = ap.parse_args()
    run_args = [x for x in a.run_args if x != "--"]
    plan_proc, plan_s = _attnbench(["run", *run_args, "--dry-run", "--json"])
    if plan_proc.returncode != 0:
        print(plan_proc.stderr, file=sys.stderr)
        return 1
    plan = json.loads(plan_proc.stdout)
    out = a.keep or Path(tempfile.mkdtemp()) / "run.jsonl"
    run_proc, run_s = _attnbench(["run", *run_args, "--out", str(out), "--yes", "--force"])
    if run_proc.returncode not in (0, 1):
        print(run_proc.stderr, file=sys.stderr)
        return 1
    records = {r["case_id"]: r for r in map(json.loads, out.read_text().splitlines()[1:]) if r.get("type") == "record"}
    print(f"{'case':<44} {'pred s':>7} {'wall s':>7} {'ratio':>6} {'pred MiB':>9} {'peak MiB':>9} {'ratio':>6}")
    cases_s = 0.0
    for c in plan["cases"]:
        if c["decision"] != "run":
            continue
        r = records.get(c["case_id"], {})
        wall, peak = r.get("wall_s"), r.get("peak_mem_bytes")
        cases_s += wall or 0.0
        name = f"{c['variant']}/{c['backend']} {c['mode']} L{c['seq_q']}x{c['seq_k']} {c['dtype']}"
        print(f"{name:<44} {c['predicted_seconds']:>7.2f} {wall or 0:>7.2f} {_ratio(wall, c['predicted_seconds']):>6} "
              f"{_mib(c['predicted_peak_bytes']):>9} {_mib(peak):>9} {_ratio(peak, c['predicted_peak_bytes']):>6}")
    pred = plan["predicted_seconds"]
    print(f"plan took {plan_s:.1f} s ({plan.get('startup_note')}); predicted {pred:.1f} s "
          f"(start-up {plan.get('predicted_startup_seconds')} s); the run took {run_s:.1f} s "
          f"(ratio {run_s / pred:.2f}); its cases' wall_s sum to {cases_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
