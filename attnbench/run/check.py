"""`attnbench check`: every available backend of the chosen variants against the fp32 oracle
at small shapes, in fp32 and in a low precision, with the relative error rule

    err(backend in dtype vs fp64 reference) <= 3 × err(reference run in dtype vs fp64) + atol

(flash-attention's test style), so the tolerance follows the reference's own rounding error.
The reference is the variant's dense oracle; approximations (Performer, Linformer, linear, LSH),
whose oracle is exact attention they only estimate, are checked against their own `eager`
formulation fed fp64 inputs, with the same random features (their error against exact attention
is what `run` measures). Backends that compute fp32 dots in TF32 on the GPU (`tf32_dots`, the
Triton kernels) are bounded by the reference run with TF32 matmuls.
On a machine without CUDA the Triton backend is checked under TRITON_INTERPRET=1 in a
subprocess (the interpreter must be on before triton is imported).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import torch

from attnbench.core.problem import Problem
from attnbench.measure.accuracy import errors
from attnbench.measure.inputs import make_inputs
from attnbench.variants import registry

K_REL, ATOL = 3.0, 1e-5


@dataclass(frozen=True)
class CheckRow:
    variant: str
    backend: str
    dtype: str
    shape: str
    rel_l2: float | None
    max_abs: float | None
    bound: float | None
    passed: bool | None  # None: not run
    note: str = ""


def check_problem(variant: registry.Variant, dtype: str, causal: bool, mode: str = "fwd") -> Problem:
    """A small problem; block-sparse patterns get 32-token blocks at L=512 (16 blocks a side),
    so their layouts are really sparse rather than dense at this size. Decode: one query row
    against a 1000-entry cache (not a multiple of any tile, so the split-KV tails are checked)."""
    params = dict(variant.defaults)
    seq = 256
    if mode == "decode":
        raw = Problem(
            batch=2,
            heads=8,
            kv_heads=0,
            seq_q=1,
            seq_k=1000,
            head_dim=64,
            dtype=dtype,
            causal=causal,
            mode="decode",
            params=tuple(sorted(params.items())),
        )
        return variant.resolve(raw)
    if "block" in params:
        params["block"], seq = 32, 512
    for key in ("window", "global_tokens"):  # narrow enough to leave most pairs out
        if key in params:
            params[key] = min(params[key], 64)
    raw = Problem(
        batch=1,
        heads=4,
        kv_heads=0,
        seq_q=seq,
        seq_k=0,
        head_dim=32,
        dtype=dtype,
        causal=causal,
        params=tuple(sorted(params.items())),
    )
    return variant.resolve(raw)


def shape_text(p: Problem) -> str:
    heads = f"H{p.heads}" if p.heads == p.kv_heads else f"H{p.heads}/{p.kv_heads}"
    return (
        f"{heads} L{p.seq_q}"
        + (f"×{p.seq_k}" if p.seq_k != p.seq_q else "")
        + (" causal" if p.causal else "")
        + (" decode" if p.mode == "decode" else "")
    )


def check_problems(v: registry.Variant, dtype: str):
    """fwd, causal and not; decode (at the variant's own causality) for the variants that declare
    `decode_check` (exact attention; MLA's absorbed decode; paged, whose Triton kernel is decode-only; dsa's
    sparse decode; gdn, whose state is the cache)."""
    for causal in (False, True):
        p = check_problem(v, dtype, causal)
        if p.causal == causal:  # variants that fix causality: checked once
            yield p
    if v.decode_check and "decode" in v.modes:
        yield check_problem(v, dtype, False, mode="decode")


def check_backend(variant: registry.Variant, backend: registry.Backend, p: Problem, device: torch.device) -> CheckRow:
    shape = shape_text(p)
    # availability: checked by run_checks
    decision = registry.decide(variant, backend.name, p, device, check_availability=False)
    if not decision.runnable:
        return CheckRow(variant.name, backend.name, p.dtype, shape, None, None, None, None, decision.reason)
    if variant.oracle == "eager" and backend.name == "eager":
        return CheckRow(
            variant.name,
            backend.name,
            p.dtype,
            shape,
            None,
            None,
            None,
            None,
            "the oracle of this approximation (`run` measures its error against exact attention)",
        )
    q, k, v = make_inputs(variant, p, device, seed=1)
    oracle, note = _oracle(variant, p, device)
    with torch.no_grad():
        out = backend.build(p, device)(q, k, v)
        truth = oracle(q.double(), k.double(), v.double())
        err = errors(out, truth)
        if p.dtype == "float32":
            tf32 = backend.tf32_dots and device.type == "cuda"
            with tf32_matmuls(tf32):
                own = errors(oracle(q.float(), k.float(), v.float()), truth)["max_abs"]
            bound = max(ATOL, K_REL * own)
            note = "; ".join(filter(None, (note, "bound from a TF32 reference" if tf32 else "")))
        else:
            bound = K_REL * errors(oracle(q, k, v), truth)["max_abs"] + ATOL
    return CheckRow(
        variant.name, backend.name, p.dtype, shape, err["rel_l2"], err["max_abs"], bound, err["max_abs"] <= bound, note
    )


def _oracle(variant: registry.Variant, p: Problem, device: torch.device):
    """(fn(q, k, v), note): the dense reference, or an approximation's own eager formulation."""
    if variant.oracle != "eager":  # "softmax" or "reference": the variant's own dense reference
        return (lambda q, k, v: variant.reference(q, k, v, p)), ""
    eager = variant.backend("eager").build(p, device)
    return eager, "vs its eager formulation (fp64 inputs)"


@contextlib.contextmanager
def tf32_matmuls(on: bool):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on or saved
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def run_checks(
    variants: list[str],
    device: torch.device,
    backends: list[str] | None = None,
    dtypes: tuple[str, ...] = ("float32", "float16"),
    interpret_triton: bool = False,
) -> list[CheckRow]:
    rows = []
    for name in variants:
        v = registry.get(name)
        for b in v.backends:
            if b.test_only or (backends and b.name not in backends):
                continue
            is_triton = b.name == "triton"
            if is_triton and device.type != "cuda" and not interpret_triton:
                continue  # without a GPU: checked in the interpreter subprocess
            if interpret_triton and not is_triton:
                continue
            why = None if (is_triton and interpret_triton) else b.why_unavailable(device)
            for dtype in dtypes:
                for p in check_problems(v, dtype):
                    if why:
                        rows.append(
                            CheckRow(name, b.name, dtype, shape_text(p), None, None, None, None, f"unavailable: {why}")
                        )
                        continue
                    try:
                        rows.append(check_backend(v, b, p, device))
                    except Exception as e:  # a failing backend is a failed check with its reason
                        rows.append(
                            CheckRow(
                                name,
                                b.name,
                                dtype,
                                shape_text(p),
                                None,
                                None,
                                None,
                                False,
                                f"{type(e).__name__}: {' '.join(str(e).split())[:200]}",
                            )
                        )
    return rows


def triton_rows_interpreted(variants: list[str], dtypes: tuple[str, ...]) -> list[CheckRow]:
    """The Triton backend's checks under the interpreter, in a subprocess."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "attnbench.run.check", ",".join(variants), ",".join(dtypes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-1:])
        return [CheckRow("*", "triton", "-", "-", None, None, None, False, f"interpreter run failed: {tail}")]
    return [CheckRow(**r) for r in json.loads(proc.stdout)]


if __name__ == "__main__":  # the interpreter subprocess
    names, dts = sys.argv[1].split(","), tuple(sys.argv[2].split(","))
    found = run_checks(names, torch.device("cpu"), backends=["triton"], dtypes=dts, interpret_triton=True)
    print(json.dumps([asdict(r) for r in found]))
