"""How often does the regression gate cry wolf, and how often does it catch a real 15 % slowdown?

    python benchmarks/gate_false_alarms.py                       # stored-baseline gate, 10 + 10 rounds
    python benchmarks/gate_false_alarms.py --mode ab --rounds 3  # same-job interleaved A/B
    python benchmarks/gate_false_alarms.py --rounds 3 -- --threshold 15%

Suite: suites/ci.toml plus one case of the test-only `fault` backend (SDPA + a busy-wait of
ATTNBENCH_TEST_DELAY_MS per call), all with --threads 1. The delay is calibrated to
--slowdown (15 %) of the fault case's median measured first.

--mode gate (stored baseline, the exact CLI a CI job runs): `attnbench baseline save` once,
  then per round one A/A `attnbench gate` (unchanged code; exit 1 = false alarm) and one with
  the delay (detection = the fault case confirmed as a regression). Also reported: what a
  single look (the first run alone, no re-run) and a single look with --normalize gemm say.
--mode ab (same-job A/B, the procedure of `attnbench ab`): per trial, --ab-rounds interleaved
  rounds of two `attnbench run`s in shuffled order, compared, then --ab-rounds more rounds of
  the regressions only to confirm them; A/A trials have no delay on either side, injected
  trials the delay on the B side only. "Single look" = before confirmation. (The revision
  export of `ab` is not exercised: both sides are this checkout.)

Honest limits: one machine, one afternoon; the figures describe this runner's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULT_SWEEP = """
[[sweep]]
variants = ["mha"]
backends = ["fault"]
seq = 256
heads = 4
head_dim = 64
params = { fault = "none" }
"""
FAULT_LABEL = "mha/fault fwd B1 H4/4 L256x256 D64 float32 fault=none"


def attnbench(args: list[str], delay_ms: float = 0.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, ATTNBENCH_TEST_BACKENDS="1", ATTNBENCH_TEST_DELAY_MS=f"{delay_ms:.4f}")
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run(
        [sys.executable, "-m", "attnbench", *map(str, args)], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode not in (0, 1):
        raise SystemExit(f"attnbench {args[0]} failed (exit {out.returncode}): {out.stderr[-600:]}")
    return out


def regressions(doc: dict) -> list[str]:
    return [c["label"] for c in doc["cases"] if c["verdict"] == "regression"]


def look(base: Path, run: Path, extra: list[str]) -> list[str]:
    """Regressions of one run against the baseline, no confirming re-run."""
    return regressions(json.loads(attnbench(["compare", base, run, "--format", "json", *extra]).stdout))


def gate_trial(suite: Path, base: Path, work: Path, tag: str, delay: float, a) -> dict:
    run = work / f"gate-{tag}.jsonl"
    t0 = time.perf_counter()
    out = attnbench(
        [
            "gate",
            "--suite",
            suite,
            "--baseline",
            base,
            "--threads",
            a.threads,
            "--out",
            run,
            "--force",
            "--format",
            "json",
            *a.gate_args,
        ],
        delay,
    )
    doc = json.loads(out.stdout)
    return {
        "exit": out.returncode,
        "regressions": regressions(doc),
        "single_look": look(base, run, a.gate_args),
        "single_look_gemm": look(base, run, [*a.gate_args, "--normalize", "gemm"]),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def ab_trial(suite: Path, work: Path, tag: str, delay: float, a) -> dict:
    """The procedure of `attnbench ab` (interleaved rounds, then confirmation rounds of the
    regressions), with both sides this checkout and the delay on side B only."""
    from attnbench.gate.ab import Rounds, Side
    from attnbench.gate.compare import make_options
    from attnbench.gate.flow import ab_compare
    from attnbench.gate.render import to_json

    env = (("ATTNBENCH_TEST_BACKENDS", "1"),)
    sides = [
        Side("a", "A", ROOT, None, env + (("ATTNBENCH_TEST_DELAY_MS", "0"),)),
        Side("b", "B", ROOT, None, env + (("ATTNBENCH_TEST_DELAY_MS", f"{delay:.4f}"),)),
    ]
    where = work / f"ab-{tag}"
    where.mkdir(parents=True, exist_ok=True)
    how = Rounds("auto", a.threads, where, random.Random(tag), lambda msg: None)
    t0 = time.perf_counter()
    report = ab_compare(sides, suite, a.ab_rounds, how, make_options(*a.ab_options), a.ab_rounds)
    doc = json.loads(to_json(report))
    first = [
        c["label"]
        for c in doc["cases"]
        if c["verdict"] == "regression" or (c.get("note") or "").startswith("re-run: first regression")
    ]
    return {
        "exit": doc["exit_code"],
        "regressions": regressions(doc),
        "single_look": first,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def summarize(a, delay: float, aa: list[dict], slow: list[dict]) -> dict:
    s = {
        "mode": a.mode,
        "rounds": a.rounds,
        "baseline_runs": a.baseline_runs,
        "ab_rounds": a.ab_rounds,
        "delay_ms": delay,
        "slowdown": a.slowdown,
        "gate_args": a.gate_args,
        "aa_false_alarms": sum(r["exit"] == 1 for r in aa),
        "injected_detected": sum(FAULT_LABEL in r["regressions"] for r in slow),
        "injected_other_cases_flagged": sum(len(set(r["regressions"]) - {FAULT_LABEL}) for r in slow),
    }
    s |= {
        "aa_single_look_alarms": sum(bool(r["single_look"]) for r in aa),
        "injected_single_look_detected": sum(FAULT_LABEL in r["single_look"] for r in slow),
    }
    if a.mode == "gate":
        s |= {
            "aa_single_look_gemm_alarms": sum(bool(r["single_look_gemm"]) for r in aa),
            "injected_single_look_gemm_detected": sum(FAULT_LABEL in r["single_look_gemm"] for r in slow),
        }
    return s | {"aa": aa, "injected": slow}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("gate", "ab"), default="gate")
    ap.add_argument("--rounds", type=int, default=10, help="A/A trials and injected trials (each)")
    ap.add_argument("--ab-rounds", type=int, default=3, help="interleaved rounds per A/B trial")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--baseline-runs", type=int, default=3, help="runs kept in the stored baseline (gate mode)")
    ap.add_argument("--slowdown", type=float, default=0.15)
    ap.add_argument("--keep", type=Path, help="keep every results file here")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gate_false_alarms.json")
    ap.add_argument("gate_args", nargs="*", help="compare options after --, e.g. -- --threshold 15%%")
    a = ap.parse_args()
    a.ab_options = _ab_options(a.gate_args)
    with tempfile.TemporaryDirectory(prefix="attnbench-fa-") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        suite = work / "ci-fault.toml"
        suite.write_text((ROOT / "suites" / "ci.toml").read_text() + FAULT_SWEEP)
        base = work / "baseline.jsonl"
        attnbench(
            ["baseline", "save", "--suite", suite, "--threads", a.threads, "--runs", a.baseline_runs, "--out", base,
             "--force"]
        )
        rec = next(r for r in map(json.loads, base.read_text().splitlines()[1:]) if r["backend"] == "fault")
        delay = a.slowdown * rec["latency_ms"]["median"]
        print(f"fault case median {rec['latency_ms']['median']:.3f} ms -> injected delay {delay:.4f} ms", flush=True)
        aa, slow = [], []
        for i in range(a.rounds):
            for tag, d, into in ((f"aa{i}", 0.0, aa), (f"slow{i}", delay, slow)):
                into.append(
                    gate_trial(suite, base, work, tag, d, a) if a.mode == "gate" else ab_trial(suite, work, tag, d, a)
                )
            print(
                f"trial {i + 1}/{a.rounds}: A/A exit {aa[-1]['exit']} {aa[-1]['regressions']} | +{a.slowdown:.0%}: "
                f"exit {slow[-1]['exit']} {slow[-1]['regressions']}",
                flush=True,
            )
    s = summarize(a, delay, aa, slow)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(s, indent=2))
    print(json.dumps({k: v for k, v in s.items() if k not in ("aa", "injected")}, indent=2), f"\n-> {a.out}")


def _ab_options(args: list[str]) -> tuple:
    """--threshold/--warn/--metric/--normalize/--alpha from the extra args, for make_options."""
    keys = ["--threshold", "--warn", "--metric", "--normalize", "--alpha"]
    vals = dict(zip(args[::2], args[1::2]))
    unknown = set(vals) - set(keys)
    if unknown:
        raise SystemExit(f"unsupported option(s) {sorted(unknown)}; accepted: {keys}")
    return (
        vals.get("--threshold", "10%"),
        vals.get("--warn", "5%"),
        vals.get("--metric", "latency"),
        vals.get("--normalize", "none"),
        float(vals.get("--alpha", 0.002)),
    )


if __name__ == "__main__":
    main()
