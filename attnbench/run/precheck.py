"""Checked before timed: a backend from outside attnbench (a user's file, an installed package:
variants/user.py) is called once on the case's own inputs and its forward output compared with
the variant's oracle before any timed sample; a wrong one is refused (status `wrong`, its error
and the budget in the record, no timing).

The oracle and the budget:
- exact variants (oracle "softmax" or "reference"): the variant's `reference` run in float64 on the
  same inputs (run/case.py `compute_error`, the error every record carries), held to the
  dtype's error budget core.tolerance.tolerance(dtype, seq_k) in relative L2;
- approximations (oracle "eager": Performer, Linformer, ...): the variant's own `eager` backend
  fed the same inputs in float64, built after the case's seed, held to the same budget: a user's
  approximation must compute the variant's definition with the same random draws (one that draws
  its features otherwise differs by its sampling error and is refused).

Honest limits: the forward output is compared (a backward is timed only after its forward was
checked, its gradients are not); a backend that computes fp32 products in TF32 on a GPU exceeds
the float32 budget and is refused; a case whose oracle is too large to compute (over the
reference limit) is refused as unchecked rather than timed on trust. Built-in backends are not
checked here: `attnbench check` and the tests hold them to the oracle, and their records carry
their error, so the main job pays nothing for this.
"""

from __future__ import annotations

import torch

from attnbench.core.problem import Problem
from attnbench.core.tolerance import tolerance
from attnbench.measure.accuracy import errors


def budget(p: Problem) -> float:
    """The relative-L2 error a checked backend may carry in this case."""
    return tolerance(p.dtype, p.seq_k)


def precheck(variant, backend, fn, p: Problem, q, k, v, device: torch.device, compute_error) -> dict:
    """The record's `precheck`: {"passed", "vs", "rel_l2", "max_abs", "budget"}, or with
    "passed": False and a "reason" when the oracle could not be computed. `compute_error` is
    run/case.py's (error of an output against the fp64 reference, or {"reason"} when too large)."""
    limit = budget(p)
    with torch.no_grad():
        qd, kd, vd = (t.detach() for t in (q, k, v))
        out = fn(qd, kd, vd)
        if variant.exact:
            err = compute_error(out)
            vs = "fp64 reference"
        else:
            err = _against_eager(variant, p, out, qd, kd, vd, device)
            vs = "the variant's eager backend in float64"
    if "reason" in err:
        return {"passed": False, "vs": vs, "budget": limit, "reason": err["reason"]}
    return {"passed": bool(err["rel_l2"] <= limit), "vs": vs, "rel_l2": err["rel_l2"], "max_abs": err["max_abs"],
            "budget": limit}


def refusal(check: dict, p: Problem) -> dict:
    """The measured fields of a refused case: status wrong, the check, the error; no timing."""
    if "reason" in check:
        why = f"not checked ({check['reason']}); a backend from outside attnbench is timed only once checked"
    else:
        why = (f"refused before timing: output differs from {check['vs']}, rel_l2 {check['rel_l2']:.3g} > budget "
               f"{check['budget']:.3g} (the tolerance of {p.dtype} at Lk={p.seq_k})")
    error = {k: check[k] for k in ("vs", "rel_l2", "max_abs", "budget") if k in check}
    return {"status": "wrong", "reason": why, "precheck": check, "error": error or None}


def _against_eager(variant, p: Problem, out, q, k, v, device: torch.device) -> dict:
    names = variant.backend_names()
    if "eager" not in names:
        return {"reason": f"variant {variant.name} is an approximation with no eager backend to check against"}
    torch.manual_seed(0)  # the case's seed: random features drawn as the backend under test drew them
    ref = variant.backend("eager").build(p, device)(q.double(), k.double(), v.double())
    return errors(out, ref)
