"""Calibrate the context-parallel scaling model on this host and check it: measure ring,
Ulysses and hybrid over gloo at world sizes 2–8 (each with its one-rank baseline), fit α–β
and the ring overlap (attnbench.distributed.calibrate), and print predicted vs measured latency.

The acceptance bar is |predicted / measured − 1| ≤ 25 % on a QUIET machine; on a loaded one
the measured times carry other processes' load and the check says nothing about the model.

    python benchmarks/cp_calibration.py                       # world 2, 4, 8; L = 4k, 8k
    python benchmarks/cp_calibration.py --worlds 2,4 --seq 2k,4k --out cal.jsonl
    python benchmarks/cp_calibration.py --from cal.jsonl      # re-fit saved records, no runs

Takes minutes (each case spawns its ranks twice: the run and its baseline).
"""

from __future__ import annotations

import argparse
import json
import os


def measure(worlds: list[int], lengths: list[int], heads: int, causal: bool) -> list[dict]:
    from attnbench.core.cp import degrees, split_reason
    from attnbench.core.problem import Problem
    from attnbench.distributed.launch import run_cp_case

    records = []
    for world in worlds:
        for strategy, u in (("ring", None), ("ulysses", None), ("hybrid", 2)):
            if strategy == "hybrid" and world < 4:
                continue
            for n in lengths:
                p = Problem(batch=1, heads=heads, kv_heads=heads, seq_q=n, seq_k=n, head_dim=64, causal=causal,
                            params=(("world_size", world),))
                if split_reason(n, heads, heads, degrees(strategy, world, u), causal):
                    continue
                rec = run_cp_case(p, world, strategy=strategy, ulysses=u, check_error=False, timeout=300)
                rec.update(batch=p.batch, heads=p.heads, kv_heads=p.kv_heads, head_dim=p.head_dim, dtype=p.dtype,
                           causal=p.causal, seq_q=n)
                records.append(rec)
                print(f"measured {strategy} P={world} L={n}: {rec['status']}", flush=True)
    return records


def report(records: list[dict], cores: int) -> None:
    from attnbench.distributed.calibrate import calibrate

    link, overlap, checks = calibrate(records, cores)
    print(f"\nfitted: α = {link.latency * 1e6:.1f} µs/message, β = {link.bandwidth / 1e9:.3f} GB/s, "
          f"ring overlap = {overlap:.1f}, cores = {cores}")
    print(f"{'strategy':>8} {'U×R':>5} {'L':>6} {'measured ms':>12} {'predicted ms':>13} {'error':>7}")
    for c in checks:
        print(f"{c.strategy:>8} {c.degrees.ulysses}×{c.degrees.ring:<3} {c.seq:>6} {c.measured_s * 1e3:>12.1f} "
              f"{c.predicted_s * 1e3:>13.1f} {c.rel_error:>+7.0%}")
    within = sum(abs(c.rel_error) <= 0.25 for c in checks)
    print(f"\n{within}/{len(checks)} within ±25 % (meaningful on a quiet machine only; load now: "
          f"{os.getloadavg()[0]:.1f} on {cores} cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", default="2,4,8")
    ap.add_argument("--seq", default="4096,8192")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--out", help="save the measured records (JSONL)")
    ap.add_argument("--from", dest="src", help="re-fit records saved with --out instead of measuring")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    if args.src:
        with open(args.src, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        records = measure([int(w) for w in args.worlds.split(",")], [int(n) for n in args.seq.split(",")],
                          args.heads, args.causal)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
    report(records, cores)


if __name__ == "__main__":
    main()
