#!/usr/bin/env bash
# The device check in one command, for a machine with an NVIDIA GPU and its own torch/triton:
# `attnbench gpu-check` (every Triton kernel against the fp64 oracle, the reference sweep into
# results/reference/<gpu>-<date>.jsonl, its report spliced into docs/gpu.md), each step's failure
# recorded in results/gpu-check/<date>-<time>/steps.jsonl and the next step still run, within a 540 s cap.
# Runs from a source checkout without installing (attnbench.kernels/.suites are linked in place).
# Usage: scripts/gpu-check.sh [PYTHON] [gpu-check options, e.g. --dry-run --json]
set -uo pipefail
py=python3
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then py=$1; shift; fi
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-160} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -e attnbench/kernels ] || ln -s ../kernels attnbench/kernels
[ -e attnbench/suites ] || ln -s ../suites attnbench/suites
exec "$py" -m attnbench gpu-check "$@"
