"""Ahead-of-time compile report: every kernel × autotune config × dtype × head dim, no GPU needed.

Each kernel is compiled with `triton.compile(ASTSource(...), target=GPUTarget("cuda", 80|90, 32))`
to PTX and cubin; the shared memory comes from the compiled metadata, registers and spills
from the Triton wheel's own ptxas run with `-v` on the PTX (`ptxas` for sm_80, `ptxas-blackwell`
for sm_90a). A row is ok when it compiles, fits the arch's opt-in shared memory and spills 0
bytes. The autotune lists in the kernel files keep only configs that pass here.

Needs a process without TRITON_INTERPRET (an interpreted kernel cannot be compiled): from
tests or an interpreting process call `run_compile_report_subprocess`, which runs
`python -m attnbench.kernels.aot --json` in a clean environment.

    python -m attnbench.kernels.aot --arch sm_80,sm_90 [--dtype float16,bfloat16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

from ._common import ARCHS, AotKernel, block_d, interpreting

SHARED_LIMITS = {"sm_80": 166912, "sm_90": 232448}  # opt-in bytes per block: 163 KiB, 227 KiB
DTYPES = ("float16", "bfloat16", "float32")
_CAPABILITY = {"sm_80": 80, "sm_90": 90}
_PTXAS_ARCH = {"sm_80": "sm_80", "sm_90": "sm_90a"}
_TRITON_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


KERNEL_MODULES = ("flash", "decode", "block_sparse", "mla_decode", "paged_decode", "dsa_decode")


def kernel_module(name: str):
    """The kernel module `name` (import_module: the package exports functions named like some of its
    modules, mla_decode and paged_decode, so `from . import mla_decode` would give the function)."""
    from importlib import import_module

    return import_module(f"{__package__}.{name}")


def all_kernels() -> tuple[AotKernel, ...]:
    return tuple(k for name in KERNEL_MODULES for k in kernel_module(name).AOT_KERNELS)


def describe(config) -> str:
    """'BLOCK_M=128 BLOCK_N=64 warps=8 stages=3' for a triton.Config."""
    tiles = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{tiles} warps={config.num_warps} stages={config.num_stages}".strip()


def _ptxas_usage(ptx: str, arch: str) -> tuple[int, int]:
    """(registers, spill bytes = stores + loads) from `ptxas -v` on the kernel's PTX."""
    from triton import knobs

    tool = knobs.nvidia.ptxas if arch == "sm_80" else knobs.nvidia.ptxas_blackwell
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        # the flags Triton itself passes to ptxas (register allocation level included)
        cmd = [tool.path, "-v", "--regAllocOptLevel=2", f"--gpu-name={_PTXAS_ARCH[arch]}", src,
               "-o", os.path.join(tmp, "kernel.cubin")]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas output: {log.strip()[:200]}")
    return int(registers.group(1)), int(spills.group(1)) + int(spills.group(2))


def _attrs(kernel: AotKernel, signature: dict) -> dict:
    """Pointers and strides divisible by 16, as the runtime specialises them for aligned tensors."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(signature)
            if signature[name].startswith("*") or name.startswith("stride")}


def compile_one(kernel: AotKernel, arch: str, dtype: str, head_dim: int, config) -> dict:
    """Compile one kernel variant; the row says what it costs and whether it fits."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = dict(kernel=kernel.name, arch=arch, dtype=dtype, head_dim=head_dim, config=describe(config),
               shared_bytes=None, registers=None, spills=None, ok=False, reason="")
    signature = kernel.signature(_TRITON_DTYPE[dtype])
    constexprs = {**kernel.constexprs, "HEAD_DIM": head_dim, "BLOCK_D": block_d(head_dim),
                  **config.kwargs}
    src = ASTSource(fn=kernel.fn, signature=signature, constexprs=constexprs,
                    attrs=_attrs(kernel, signature))
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", _CAPABILITY[arch], 32),
                                  options={"num_warps": config.num_warps,
                                           "num_stages": config.num_stages})
        row["shared_bytes"] = compiled.metadata.shared
        row["registers"], row["spills"] = _ptxas_usage(compiled.asm["ptx"], arch)
    except (RuntimeError, subprocess.CalledProcessError, triton.CompilationError) as e:
        row["reason"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        return row
    problems = []
    if row["shared_bytes"] > SHARED_LIMITS[arch]:
        problems.append(f"shared {row['shared_bytes']} B > {SHARED_LIMITS[arch]} B")
    if row["spills"]:
        problems.append(f"spills {row['spills']} B")
    row["ok"], row["reason"] = not problems, "; ".join(problems)
    return row


def _compile_job(job: tuple) -> dict:
    """(kernel index, arch, dtype, head dim, config index): small and picklable for the pool."""
    kernel_index, arch, dtype, head_dim, config_index = job
    kernel = all_kernels()[kernel_index]
    return compile_one(kernel, arch, dtype, head_dim, kernel.configs[arch][config_index])


def compile_report(archs=("sm_80", "sm_90"), dtypes=("float16", "bfloat16"), *,
                   all_head_dims: bool = False, workers: int | None = None) -> list[dict]:
    """One row per kernel × arch × autotune config × dtype × head dim, compiled in parallel.

    Each config list is compiled at the largest head dim it serves (128, or 256 for the wide
    lists: the most registers and shared memory); all_head_dims adds the others (64)."""
    if interpreting():
        raise RuntimeError("compile_report needs a process without TRITON_INTERPRET=1; "
                           "use run_compile_report_subprocess")
    for arch in archs:
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; accepted: {', '.join(ARCHS)}")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; accepted: {', '.join(DTYPES)}")
    jobs = [(n, arch, dtype, d, i) for n, k in enumerate(all_kernels()) for arch in archs
            for dtype in dtypes for d in (k.head_dims if all_head_dims else k.head_dims[-1:])
            for i in range(len(k.configs[arch]))]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(_compile_job, jobs))


def run_compile_report_subprocess(archs=("sm_80", "sm_90"), dtypes=("float16", "bfloat16"), *,
                                  all_head_dims: bool = False, timeout: float = 1800) -> list[dict]:
    """compile_report in a fresh `python -m attnbench.kernels.aot --json` without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "attnbench.kernels.aot", "--arch", ",".join(archs),
           "--dtype", ",".join(dtypes), "--json"] + (["--all-head-dims"] if all_head_dims else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode not in (0, 1):  # 1: the report ran and some row failed
        raise RuntimeError(f"compile report failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def format_rows(rows: list[dict]) -> str:
    """Plain fixed-width table (the CLI prints a rich one)."""
    lines = [f"{'kernel':<18}{'arch':<7}{'dtype':<10}{'D':>4}  {'config':<42}{'smem':>8}{'regs':>6}"
             f"{'spill':>7}  status"]
    for r in rows:
        lines.append(f"{r['kernel']:<18}{r['arch']:<7}{r['dtype']:<10}{r['head_dim']:>4}  "
                     f"{r['config']:<42}{r['shared_bytes'] or '-':>8}{r['registers'] or '-':>6}"
                     f"{'-' if r['spills'] is None else r['spills']:>7}  "
                     f"{'ok' if r['ok'] else 'FAIL ' + r['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnbench.kernels.aot", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="sm_80,sm_90", help="comma-separated: sm_80, sm_90")
    parser.add_argument("--dtype", default="float16,bfloat16", help="comma-separated: " + ", ".join(DTYPES))
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    parser.add_argument("--all-head-dims", action="store_true",
                        help="also compile each list at its smaller head dims (64): slower")
    args = parser.parse_args(argv)
    try:
        rows = compile_report(tuple(args.arch.split(",")), tuple(args.dtype.split(",")),
                              all_head_dims=args.all_head_dims)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=1) if args.json else format_rows(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
