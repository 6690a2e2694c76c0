"""The Triton flash kernel's modifier paths (attention sinks, a sink logit, logit soft-capping)
forward and backward, against the fp64 oracle, with `attnbench check`'s relative rule:

    err(backend in dtype vs fp64 oracle) <= 3 × err(oracle run in dtype vs fp64) + atol

`attnbench check` runs each variant at its defaults (sinks and soft-cap off) and forward only;
this fills that gap for the device check (`attnbench gpu-check`, step `check-flash-mods`).
Backward: the gradients of q, k and v for one fixed random dout, the worst of the three
max-abs errors held to the same rule against the oracle's own gradients.

Honest limits: one small shape per case (B=1, H=4, L=256, D=64) and one dout. On a CPU the
Triton rows say `unavailable` with the reason, unless run under the interpreter
(`TRITON_INTERPRET=1 ... --device cpu --dtype float32 --interpret 1`: about 45 s on a loaded
2-core machine; bf16 dots are wrong under the interpreter, FACTS.md).

    python -m attnbench.run.check_mods --device cuda [--dtype float32,bfloat16] [--backend triton] [--interpret 1]

prints the rows as JSON; exit code 1 when a row failed, 2 for bad options or `--device cuda`
without a GPU.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import torch

from attnbench.core.problem import Problem
from attnbench.measure.accuracy import errors
from attnbench.measure.inputs import make_inputs
from attnbench.run.check import ATOL, K_REL, CheckRow, check_backend, shape_text, tf32_matmuls
from attnbench.variants import registry

# (variant, parameters): soft-cap alone; sinks with soft-cap; sinks with a learned sink logit
CASES = (
    ("mha", {"softcap": 30.0}),
    ("sliding_window", {"window": 64, "sinks": 4, "softcap": 30.0}),
    ("sliding_window", {"window": 64, "sinks": 4, "sink_logit": "learned"}),
)


def mods_problem(variant: registry.Variant, params: dict, dtype: str, mode: str) -> Problem:
    merged = {**variant.defaults, **params}
    raw = Problem(batch=1, heads=4, kv_heads=0, seq_q=256, seq_k=0, head_dim=64, dtype=dtype, causal=True,
                  mode=mode, params=tuple(sorted(merged.items())))
    return variant.resolve(raw)


def _grads(out: torch.Tensor, inputs: tuple, dout: torch.Tensor) -> tuple:
    return torch.autograd.grad(out, inputs, dout)


def check_backward(variant: registry.Variant, backend: registry.Backend, p: Problem,
                   device: torch.device) -> CheckRow:
    """dq, dk, dv of the backend against the fp64 oracle's, bounded by the oracle's own gradients
    computed in the case's dtype (TF32 matmuls for a TF32 backend in float32)."""
    shape = shape_text(p) + " bwd"
    q, k, v = make_inputs(variant, p, device, seed=1)
    dout = torch.randn(q.shape, dtype=q.dtype, device=device, generator=torch.Generator(device).manual_seed(2))

    def grads_of(fn, dtype):
        xs = tuple(t.detach().to(dtype).requires_grad_(True) for t in (q, k, v))
        return _grads(fn(*xs), xs, dout.to(dtype))

    reference = lambda a, b, c: variant.reference(a, b, c, p)  # noqa: E731
    truth = grads_of(reference, torch.float64)
    got = grads_of(backend.build(p, device), q.dtype)
    tf32 = backend.tf32_dots and device.type == "cuda" and p.dtype == "float32"
    with tf32_matmuls(tf32):
        own = grads_of(reference, q.dtype)
    err = [errors(g, t) for g, t in zip(got, truth)]
    own_err = max(errors(o, t)["max_abs"] for o, t in zip(own, truth))
    worst = max(e["max_abs"] for e in err)
    bound = K_REL * own_err + ATOL
    return CheckRow(variant.name, backend.name, p.dtype, shape, max(e["rel_l2"] for e in err), worst, bound,
                    worst <= bound, "dq, dk, dv: the worst" + ("; bound from a TF32 reference" if tf32 else ""))


def run_mods(device: torch.device, dtypes: tuple[str, ...] = ("float32", "bfloat16"),
             backend_name: str = "triton", interpret: bool = False) -> list[CheckRow]:
    """The rows of CASES × dtypes × (fwd, fwd+bwd); `interpret`: the Triton kernels run under
    TRITON_INTERPRET=1 on CPU tensors (set before triton is imported), so availability is not asked."""
    rows = []
    for name, params in CASES:
        v = registry.get(name)
        b = v.backend(backend_name)
        for dtype in dtypes:
            for mode in ("fwd", "fwd+bwd"):
                p = mods_problem(v, params, dtype, mode)
                shape = shape_text(p) + " " + ",".join(f"{k}={val}" for k, val in params.items())
                decision = registry.decide(v, b.name, p, device, check_availability=not interpret)
                if not decision.runnable:
                    rows.append(CheckRow(name, b.name, dtype, shape, None, None, None, None,
                                         f"{decision.status}: {decision.reason}"))
                    continue
                try:
                    row = check_backend(v, b, p, device) if mode == "fwd" else check_backward(v, b, p, device)
                    rows.append(CheckRow(**{**asdict(row), "shape": shape + (" bwd" if mode != "fwd" else "")}))
                except Exception as e:  # a failing kernel is a failed row with its reason
                    rows.append(CheckRow(name, b.name, dtype, shape, None, None, None, False,
                                         f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"))
    return rows


def main(argv: list[str]) -> int:
    opts = {"--device": "cuda", "--dtype": "float32,bfloat16", "--backend": "triton", "--interpret": "0"}
    for flag, value in zip(argv[::2], argv[1::2]):
        if flag not in opts:
            print(f"error: unknown option {flag}; accepted: {', '.join(opts)}", file=sys.stderr)
            return 2
        opts[flag] = value
    if opts["--device"] == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is visible here; accepted: cpu (with --backend eager, or "
              "--interpret 1 under TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    rows = run_mods(torch.device(opts["--device"]), tuple(opts["--dtype"].split(",")), opts["--backend"],
                    interpret=opts["--interpret"] == "1")
    print(json.dumps([asdict(r) for r in rows], indent=1))
    return 1 if any(r.passed is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
