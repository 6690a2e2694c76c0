#!/usr/bin/env bash
# The CI performance-regression gate as a local script (the same steps as the GitHub Actions job
# in docs/ci.md):
#   1. a baseline for this environment (device, torch, triton, threads, ...) if there is none yet;
#   2. the gate: run the suite, compare with the baseline, re-run suspects, write the reports.
# Exit code: the gate's (0 pass, 1 confirmed regression, 2 benchmark errors, 3 usage/baseline/env).
#
# Usage:   scripts/ci-gate-example.sh [extra gate options, e.g. --threshold 15%]
# Settings (environment variables, with defaults):
#   SUITE=ci  BASELINES=results/baselines  BASELINE_RUNS=3  THREADS=1  OUT_DIR=results
#   ATTNBENCH=attnbench
set -euo pipefail

SUITE=${SUITE:-ci}
BASELINES=${BASELINES:-results/baselines}
BASELINE_RUNS=${BASELINE_RUNS:-3}  # runs kept in a new baseline (its run-to-run spread)
THREADS=${THREADS:-1}            # one thread: far steadier timings on a shared CPU
OUT_DIR=${OUT_DIR:-results}
ATTNBENCH=${ATTNBENCH:-attnbench}   # e.g. ".venv/bin/attnbench" or "python -m attnbench"

mkdir -p "$BASELINES" "$OUT_DIR"

# 1. Baseline: one file per environment, saved atomically; commit it or cache it in CI.
BASE=$($ATTNBENCH baseline path --threads "$THREADS" --dir "$BASELINES")
if [[ ! -f "$BASE" ]]; then
    echo "no baseline for this environment: saving $BASE" >&2
    $ATTNBENCH baseline save --suite "$SUITE" --threads "$THREADS" --runs "$BASELINE_RUNS" --out "$BASE"
fi

# 2. Gate: Markdown summary on stdout (-> $OUT_DIR/gate.md), JUnit XML and JSON beside it.
rc=0
$ATTNBENCH gate --suite "$SUITE" --baseline "$BASE" --threads "$THREADS" \
    --out "$OUT_DIR/gate-run.jsonl" --format markdown --force \
    --report "$OUT_DIR/gate.xml" --report "$OUT_DIR/gate.json" "$@" > "$OUT_DIR/gate.md" || rc=$?

cat "$OUT_DIR/gate.md"
if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
    cat "$OUT_DIR/gate.md" >> "$GITHUB_STEP_SUMMARY"
fi
echo "gate exit code: $rc" >&2
exit "$rc"
