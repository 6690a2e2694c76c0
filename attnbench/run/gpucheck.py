"""The device check (`attnbench gpu-check`, `scripts/gpu-check.sh`): on a machine with an NVIDIA
GPU, in one command and within about nine minutes on an H100, every Triton kernel against the fp64
oracle (`attnbench check --device cuda`: flash forward, split-KV decode, block-sparse, MLA decode,
paged decode; `check_mods`: the flash kernel's sinks and soft-cap paths forward and backward), the
reference sweep (suites/reference.toml) written to results/reference/<gpu>-<date>.jsonl, and
`attnbench report` of it spliced into docs/gpu.md.

Robustness: every step is a subprocess with its own timeout; its outcome (ok, failed with the
exit code and the last lines of stderr, timeout, skipped with the reason) is appended and fsynced
to steps.jsonl as it ends, and the next step runs whatever happened. The whole check has a cap
(`cap_s`): a step gets three times its predicted time where the cap leaves the later steps theirs,
and never less than its own prediction while the cap lasts.

Predictions (`--dry-run`) come from an explicit model, never from a GPU measurement: `ASSUMED`
holds the interpreter, compile and per-case costs (assumptions, written down with their reason),
and a case's call time comes from the cost model (measure/cost.py) at H100 nominal rates
(`H100_NOMINAL`, the datasheet's dense bf16 tensor rate; HBM3 bandwidth). Honest limits: the
assumptions have never been checked on an H100 (no lent machine yet); they are chosen high, and
the cap protects the lease if they are wrong.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Assumed costs in seconds (not measured on a GPU): chosen on the high side.
ASSUMED = {
    "python_start": 10.0,  # interpreter + import torch/triton + CUDA context (measured ~4 s on this CPU)
    "triton_compile": 2.0,  # one Triton kernel specialisation for one autotune config
    "autotune_configs": 2,  # configs per kernel on sm_90 (kernels/configs.py: 1-2 per list)
    "check_row": 0.2,  # one check row besides compiling: inputs, the call, the fp64 oracle
    "backward_kernels": 2,  # a backward row compiles dK/dV and dQ besides the forward
    "case_overhead": 1.5,  # one sweep case: worker IPC, inputs, profiler + memory pass, oracle, flush buffer
    "flex_compile": 20.0,  # FlexAttention's first compile of a mask in a process (CPU: ~14 s, FACTS.md)
    "energy_loop": 1.0,  # the energy loop per case (measure/energy.py: long enough for NVML's counter)
    "refs": 5.0,  # in-run references once per run: GEMM per dtype, five copy sizes, the L2 check
    "report": 15.0,  # `attnbench report` of ~20 records: tables and charts (matplotlib)
}
# H100 SXM nominal rates: dense bf16 tensor FLOP/s (datasheet 989 TFLOP/s); fp32 via TF32 (494).
H100_NOMINAL = {"gemm": {"bfloat16": {"flops_per_s": 989e12}, "float16": {"flops_per_s": 989e12},
                         "float32": {"flops_per_s": 494e12}}}
CAP_S = 540.0  # nine minutes
MIN_TIMEOUT_S = 60.0

# The kernels `attnbench check` exercises, one step per kernel family: (step, variants)
CHECK_STEPS = (
    ("check-flash", ("mha", "gqa", "alibi", "sliding_window")),  # fwd rows: flash; decode rows: split-KV decode
    ("check-block-sparse", ("bigbird", "longformer", "strided")),
    ("check-mla-decode", ("mla",)),
    ("check-paged-decode", ("paged",)),
)
CHECK_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]  # the command ("{py}" is this interpreter)
    predicted_seconds: float
    model: str  # how the prediction was made
    stdout: str | None = None  # file (in the check's directory) that keeps stdout
    needs: str | None = None  # a file that must exist before the step can run


def _py() -> tuple[str, ...]:
    return ("{py}", "-m", "attnbench")


def check_step(name: str, variants: tuple[str, ...]) -> Step:
    from attnbench.run.check import check_problems
    from attnbench.variants import registry

    rows = sum(1 for v in variants for d in CHECK_DTYPES for _ in check_problems(registry.get(v), d))
    a = ASSUMED
    per_row = a["autotune_configs"] * a["triton_compile"] + a["check_row"]
    argv = (*_py(), "check", "--device", "cuda", "--backends", "triton", "--variants", ",".join(variants),
            "--dtype", ",".join(CHECK_DTYPES), "--json")
    return Step(name, argv, a["python_start"] + rows * per_row,
                f"python_start + {rows} rows × (autotune_configs × triton_compile + check_row)", f"{name}.json")


def mods_step() -> Step:
    from attnbench.run.check_mods import CASES

    a = ASSUMED
    fwd = len(CASES) * len(CHECK_DTYPES)
    per = a["autotune_configs"] * a["triton_compile"]
    bwd = (1 + a["backward_kernels"]) * per
    seconds = a["python_start"] + fwd * (per + a["check_row"]) + fwd * (bwd + a["check_row"])
    argv = ("{py}", "-m", "attnbench.run.check_mods", "--device", "cuda", "--dtype", ",".join(CHECK_DTYPES))
    return Step("check-flash-mods", argv, seconds,
                f"python_start + {fwd} fwd rows (1 kernel) + {fwd} fwd+bwd rows (1 + backward_kernels kernels), "
                "each × autotune_configs × triton_compile + check_row", "check-flash-mods.json")


def case_seconds(case, sample_time: float) -> float:
    """One reference case: overhead, first-call compile, warm-up and the timed loop (capped by
    sample_time; the call from the cost model at H100 nominal rates), the energy loop."""
    from attnbench.measure.cost import predict_call_seconds
    from attnbench.variants import registry

    a = ASSUMED
    v = registry.get(case.variant)
    materializes = v.backend(case.backend).materializes
    call = predict_call_seconds(case.problem, v.flops, materializes, H100_NOMINAL) or 0.0
    compiles = {"triton": a["autotune_configs"] * a["triton_compile"], "flex": a["flex_compile"]}
    compile_s = compiles.get(case.backend, 0.0)
    timed = 0.05 + max(min(sample_time, 10 * call), 0.2)  # warm-up, then >= 0.2 s of samples up to the cap
    return a["case_overhead"] + compile_s + timed + 3 * call + a["energy_loop"]


def sweep_step(out_file: str) -> Step:
    import torch

    from attnbench.run.plan import expand, load_suite

    sweeps, opts = load_suite("reference")
    cases = [c for c in expand(sweeps, torch.device("cuda")) if c.status in (None, "unavailable")]
    seconds = ASSUMED["python_start"] + ASSUMED["refs"] + sum(case_seconds(c, opts["sample_time"]) for c in cases)
    argv = (*_py(), "run", "--suite", "reference", "--device", "cuda", "--out", out_file, "--force")
    return Step("sweep-reference", argv, seconds,
                f"python_start + refs + {len(cases)} cases × (case_overhead + compile (triton: autotune_configs × "
                "triton_compile; flex: flex_compile) + timed loop (call from measure/cost.py at H100 nominal "
                "rates, capped by the suite's sample_time) + energy_loop)")


def report_step(out_file: str, report_dir: str) -> Step:
    argv = (*_py(), "report", out_file, "--out", report_dir)
    return Step("report", argv, ASSUMED["python_start"] + ASSUMED["report"], "python_start + report", needs=out_file)


def docs_step(out_file: str, report_dir: str, doc: str) -> Step:
    argv = ("{py}", "-m", "attnbench.report.gpudoc", out_file, report_dir, doc)
    return Step("docs", argv, ASSUMED["python_start"], "python_start", needs=f"{report_dir}/report.md")


def plan(gpu: str = "<gpu>", date: str = "<date>", root: str = ".") -> list[Step]:
    """The steps in order; `gpu` and `date` name the reference file."""
    ref = f"{root}/results/reference/{gpu}-{date}.jsonl"
    report_dir = f"{root}/docs/gpu-reference"
    env = Step("environment", ("nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                             "power.limit", "--format=csv"), 2.0, "nvidia-smi: ~1 s", "env.csv")
    return [env, *(check_step(n, v) for n, v in CHECK_STEPS), mods_step(), sweep_step(ref),
            report_step(ref, report_dir), docs_step(ref, report_dir, f"{root}/docs/gpu.md")]


def dry_run(steps: list[Step], cap_s: float = CAP_S) -> dict:
    total = sum(s.predicted_seconds for s in steps)
    return {"steps": [{"name": s.name, "predicted_seconds": round(s.predicted_seconds, 1), "model": s.model,
                       "command": " ".join(s.argv).replace("{py}", "python")} for s in steps],
            "predicted_seconds": round(total, 1), "cap_seconds": cap_s, "within_cap": total <= cap_s,
            "assumed": ASSUMED, "rates": "H100 SXM nominal: bf16 989 TFLOP/s dense, fp32 (TF32) 494 TFLOP/s",
            "note": "predictions from the model above (assumed costs), not measurements on a GPU"}


def gpu_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def step_timeout(i: int, steps: list[Step], deadline: float) -> float:
    """Step i's timeout: generous (3 × its prediction, at least MIN_TIMEOUT_S) where the cap leaves
    the later steps their predicted time, never less than its own prediction while the cap lasts
    (the steps run in order of importance: an early step is not starved for a later one)."""
    step, left = steps[i], deadline - time.monotonic()
    later = sum(s.predicted_seconds for s in steps[i + 1:])
    generous = min(max(3 * step.predicted_seconds, MIN_TIMEOUT_S), left - later)
    return max(generous, min(step.predicted_seconds, left), 0.0)


def run_step(step: Step, timeout: float, out_dir: Path) -> dict:
    """Run one step; its outcome as a dict (never raises for the step's own failure)."""
    if step.needs and not Path(step.needs).exists():
        return {"status": "skipped", "reason": f"{step.needs} was not written by an earlier step"}
    if timeout < 1:
        return {"status": "skipped", "reason": "the check's time cap leaves no time for this step"}
    argv = [sys.executable if a == "{py}" else a for a in step.argv]
    out = open(out_dir / (step.stdout or f"{step.name}.out"), "w")
    err_path = out_dir / f"{step.name}.err"
    t0 = time.monotonic()
    try:
        with out, open(err_path, "w") as err:
            proc = subprocess.run(argv, stdout=out, stderr=err, timeout=timeout,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"no end within {timeout:.0f} s", "wall_s": time.monotonic() - t0}
    except OSError as e:
        return {"status": "failed", "reason": f"could not start {argv[0]}: {e}", "wall_s": time.monotonic() - t0}
    tail = " | ".join(err_path.read_text(errors="replace").strip().splitlines()[-3:])[-400:]
    status = "ok" if proc.returncode == 0 else "failed"
    reason = None if status == "ok" else f"exit code {proc.returncode}: {tail or '(no stderr)'}"
    return {"status": status, "reason": reason, "rc": proc.returncode, "wall_s": time.monotonic() - t0}


def check_counts(path: Path) -> dict | None:
    """{passed, failed, not_run, failed_rows} of a check step's JSON rows; None when it wrote none."""
    try:
        rows = json.loads(path.read_text()) if path.suffix == ".json" else None
    except (OSError, ValueError):
        return None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "passed" in r for r in rows):
        return None
    failed = [f"{r['variant']}/{r['backend']} {r['dtype']} {r['shape']}: {r.get('note') or ''}"[:200]
              for r in rows if r["passed"] is False]
    return {"passed": sum(r["passed"] is True for r in rows), "failed": len(failed),
            "not_run": sum(r["passed"] is None for r in rows), "failed_rows": failed}


def run_all(steps: list[Step], out_dir: Path, cap_s: float = CAP_S, echo=print) -> list[dict]:
    """Run every step in order, each outcome appended (fsynced) to out_dir/steps.jsonl as it ends,
    and summary.json at the end."""
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + cap_s
    log = out_dir / "steps.jsonl"
    results = []
    for i, step in enumerate(steps):
        timeout = step_timeout(i, steps, deadline)
        echo(f"== {step.name} (predicted {step.predicted_seconds:.0f} s, timeout {timeout:.0f} s)")
        res = {"name": step.name, "predicted_seconds": round(step.predicted_seconds, 1),
               **run_step(step, timeout, out_dir)}
        if rows := check_counts(out_dir / (step.stdout or "")):
            res["rows"] = rows
        results.append(res)
        with open(log, "a") as f:
            f.write(json.dumps(res) + "\n")
            f.flush()
            os.fsync(f.fileno())
        echo(f"   {res['status']}" + (f": {res['reason']}" if res.get("reason") else "")
             + (f" ({res['wall_s']:.0f} s)" if "wall_s" in res else "")
             + (" rows: {passed} passed, {failed} failed, {not_run} not run".format(**rows) if rows else ""))
    summary = {"steps": results, "ok": sum(r["status"] == "ok" for r in results), "of": len(results),
               "wall_s": round(cap_s - (deadline - time.monotonic()), 1)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return results


def as_json(steps: list[Step]) -> list[dict]:
    return [asdict(s) for s in steps]
