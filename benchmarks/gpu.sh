#!/usr/bin/env bash
# The GPU checks in one go, for a machine with a CUDA device and its own torch/triton:
# environment, `attnbench check` on the GPU (every backend, fp32/fp16/bf16, fwd and decode),
# then the gpu suite and its table. Usage: benchmarks/gpu.sh OUTDIR [PYTHON]
# Runs from a source checkout without installing: attnbench.kernels/.suites are linked in place.
# CHECK_TIMEOUT / SUITE_TIMEOUT (seconds) bound each step; PYTEST=1 also runs the kernel tests.
set -uo pipefail
out=${1:?usage: benchmarks/gpu.sh OUTDIR [PYTHON]}
py=${2:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-160} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -e attnbench/kernels ] || ln -s ../kernels attnbench/kernels
[ -e attnbench/suites ] || ln -s ../suites attnbench/suites
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/env.txt"
"$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee -a "$out/env.txt"
echo "== attnbench check (cuda): rows that did not pass"
timeout "${CHECK_TIMEOUT:-300}" "$py" -m attnbench check --device cuda --dtype float32,float16,bfloat16 --json > "$out/check.json"
echo "check exit code $?"
"$py" - "$out/check.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
print(f"{sum(r['passed'] is True for r in rows)} passed, {sum(r['passed'] is False for r in rows)} failed, "
      f"{sum(r['passed'] is None for r in rows)} skipped")
for r in rows:
    if r["passed"] is False:
        print("FAIL", r["variant"], r["backend"], r["dtype"], r["shape"], r["max_abs"], r["bound"], r["note"][:160])
PY
if [ "${PYTEST:-0}" = 1 ]; then
  echo "== pytest, kernel files"
  timeout 180 "$py" -m pytest -q -p no:cacheprovider tests/test_kernels_flash.py 2>&1 | tail -15 | tee "$out/pytest.txt"
fi
echo "== gpu suite"
timeout "${SUITE_TIMEOUT:-600}" "$py" -m attnbench run --suite gpu --out "$out/gpu.jsonl" --force 2>&1 | tail -3
"$py" -m attnbench show "$out/gpu.jsonl" > "$out/gpu-table.txt" 2>&1
echo "gpu suite: $(grep -c '"type": "result"' "$out/gpu.jsonl") records in $out/gpu.jsonl"
