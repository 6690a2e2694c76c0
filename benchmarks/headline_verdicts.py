"""Is the main job's conclusion the same every time? Run the default suite N times and count verdicts.

    python benchmarks/headline_verdicts.py                 # 20 runs of `attnbench run` (the quick suite)
    python benchmarks/headline_verdicts.py -n 5 -- --threads 1

Each run is the README's main command, `attnbench run` (plus any arguments after `--`), into a
fresh results file; `attnbench show --json` then gives its scaling verdicts. Printed: for each
fwd series and quantity (latency, memory), how many runs said agrees / differs / inconclusive /
too few lengths, with the exponents' range; each run's wall time (the promise: at most 60 s on an
idle 2-core machine) and the load average before it, so a loaded run is visible as one. Exit
status 0 always: this script reports, it does not judge.

Honest limits: the headline claims are the memory verdicts (eager O(L²), SDPA O(L)); latency
verdicts on a shared CPU are often inconclusive, and that is the right answer there. A run on a
machine busy with other work says so (load average above the cores) and should be repeated when
it is quiet.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = (("mha:eager", "memory", "O(L²)"), ("mha:sdpa", "memory", "O(L)"))


def attnbench(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name("attnbench")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "attnbench", *args]


def one_run(out: Path, extra: list[str]) -> tuple[float, float, list[dict]]:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(attnbench("run", "--out", str(out), "-q", *extra), cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    shown = subprocess.run(attnbench("show", str(out), "--json"), cwd=ROOT, check=True, capture_output=True, text=True)
    rows = [r for r in json.loads(shown.stdout)["scaling"] if r["shape"].startswith("fwd")]
    return wall, load, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="runs (default 20)")
    ap.add_argument("extra", nargs="*", help="arguments after -- go to every `attnbench run`")
    args = ap.parse_args()
    counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    exps: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            wall, load, rows = one_run(Path(tmp) / f"run-{i}.jsonl", args.extra)
            walls.append(wall)
            said = []
            for r in rows:
                counts[r["series"], r["metric"]][r["verdict"]] += 1
                if r["exponent"] is not None:
                    exps[r["series"], r["metric"]].append(r["exponent"])
                if (r["series"], r["metric"]) in {(s, m) for s, m, _ in HEADLINE}:
                    ci = f"[{r['ci_low'] or 0:.2f}, {r['ci_high'] or 0:.2f}]"
                    said.append(f"{r['series']} {r['metric']} {r['verdict']} {ci}")
            busy = " (loaded)" if load > (os.cpu_count() or 1) else ""
            print(f"run {i + 1:2d}: {wall:5.1f} s, load {load:.1f}{busy}; " + "; ".join(said), flush=True)
    print(f"\nwall s: min {min(walls):.1f}, median {sorted(walls)[len(walls) // 2]:.1f}, max {max(walls):.1f}; "
          f"{sum(w > 60 for w in walls)} of {len(walls)} runs over 60 s")
    print(f"{'series':12s} {'quantity':8s} {'claim':6s} {'agrees':>6s} {'differs':>7s} {'inconcl.':>8s} "
          f"{'other':>5s}  exponents")
    claims = {(s, m): c for s, m, c in HEADLINE}
    for (series, metric), c in sorted(counts.items()):
        other = sum(v for k, v in c.items() if k not in ("agrees", "differs", "inconclusive"))
        e = exps[series, metric]
        span = f"{min(e):.2f}..{max(e):.2f}" if e else "-"
        print(f"{series:12s} {metric:8s} {claims.get((series, metric), ''):6s} {c['agrees']:6d} {c['differs']:7d} "
              f"{c['inconclusive']:8d} {other:5d}  {span}")


if __name__ == "__main__":
    main()
