"""A backend's outputs against a reference's: the record's `reference_check`.

The bound is element-wise, |x - r| <= atol + rtol·|r|, with atol = rtol = core.tolerance's budget
for the output dtype and the longest key length: K·(u_dtype + u_float32·√Lk), K = 4. Why that
bounds the reference's own low-precision error: a definition's reference computes in float32 and
rounds its output to the output dtype (bf16: u = 2^-8), so it is itself up to ½ unit off the exact
result, and an exact backend rounded the same way is up to one unit from it; the budget allows
four units plus the float32 accumulation's random walk. The base-2 lse is held to an absolute
bound, lse_atol = atol / ln 2: an lse off by δ scales the output by 2^δ ≈ 1 + δ·ln 2, so this is
the lse error that would use the output's relative budget (a relative bound on the lse itself would
grow with log2 Lk and let a wrong normaliser through).
Positions where the reference is infinite (an empty sequence's lse is -inf) must hold the same value
in the backend. Positions where it is NaN are undefined and left out (a causal query that sees no key,
when a sequence has more queries than keys: the published references take a softmax over nothing);
the check counts them (`undefined`).

    max_abs   max |x - r| over the finite positions
    max_rel   max |x - r| / (atol + |r|): 1 is the bound's edge when rtol = atol (above 1 fails)

A gdn op (Gated DeltaNet) has no lse: its second output is the recurrent state `new_state`, which
the references keep in float32. It is held to the same element-wise form with state_atol =
state_rtol = core.tolerance's float32 budget over steps·head_size products, K·(u_f32 + u_f32·√(L·K)):
each step's S k is a K-long float32 dot product and the L steps of a sequence compound, so the
state carries float32 accumulation over L·K products and no rounding to a narrower dtype (L = 150,
K = 128: 3.3e-5 against states of magnitude ~1; measured float32 against float64 there: 3e-7).
Recorded as `state_max_abs` and `state_max_rel`; passed needs both outputs inside their bounds.
"""

from __future__ import annotations

import math

import torch

from attnbench.core.tolerance import tolerance


def bounds(dtype: str, seq_k: int) -> dict[str, float]:
    """{atol, rtol, lse_atol} for an output of `dtype` over at most `seq_k` keys."""
    t = tolerance(dtype, seq_k)
    return {"atol": t, "rtol": t, "lse_atol": t / math.log(2.0)}


def compare(x: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> tuple[bool, float, float, str | None]:
    """(passed, max_abs, max_rel, why it failed or None) of `x` against `ref` (any shapes that agree)."""
    if tuple(x.shape) != tuple(ref.shape):
        return False, math.inf, math.inf, f"shape {tuple(x.shape)} is not the reference's {tuple(ref.shape)}"
    x64, r64 = x.detach().double().cpu(), ref.detach().double().cpu()
    defined = ~torch.isnan(r64)
    x64, r64 = x64[defined], r64[defined]
    fin = torch.isfinite(r64)
    same_nonfinite = x64[~fin] == r64[~fin]
    if not bool(same_nonfinite.all()):
        bad = int((~same_nonfinite).sum())
        return False, math.inf, math.inf, f"{bad} positions differ where the reference is not finite"
    if not bool(torch.isfinite(x64[fin]).all()):
        bad = int((~torch.isfinite(x64[fin])).sum())
        return False, math.inf, math.inf, f"{bad} non-finite values where the reference is finite"
    if not bool(fin.any()):
        return True, 0.0, 0.0, None
    diff = (x64[fin] - r64[fin]).abs()
    rel = diff / (atol + r64[fin].abs())
    ok = bool((diff <= atol + rtol * r64[fin].abs()).all())
    max_abs, max_rel = float(diff.max()), float(rel.max())
    return ok, max_abs, max_rel, None if ok else f"max |x - r| {max_abs:.3g} exceeds atol {atol:.3g} + rtol·|r|"


def state_bounds(steps: int, head_size: int) -> dict[str, float]:
    """{state_atol, state_rtol} for a float32 recurrent state after `steps` tokens of `head_size`."""
    t = tolerance("float32", max(1, steps) * max(1, head_size))
    return {"state_atol": t, "state_rtol": t}


def state_check(res: dict, state: torch.Tensor, ref_state: torch.Tensor, steps: int, head_size: int) -> dict:
    """`res` (a reference_check) with the state's comparison added: state_max_abs, state_max_rel,
    the state bounds in its tolerance, passed only if both outputs pass."""
    tol = state_bounds(steps, head_size)
    ok, max_abs, max_rel, why = compare(state, ref_state, tol["state_atol"], tol["state_rtol"])
    out = {**res, "passed": res["passed"] and ok, "state_max_abs": max_abs, "state_max_rel": max_rel,
           "tolerance": {**{k: v for k, v in res["tolerance"].items() if k != "lse_atol"}, **tol}}
    if why and "why" not in out:
        out["why"] = f"new_state: {why}"
    return out


def reference_check(out: torch.Tensor, lse: torch.Tensor | None, ref_out: torch.Tensor, ref_lse: torch.Tensor | None,
                    dtype: str, seq_k: int, reference: str, lse_reason: str | None = None) -> dict:
    """The record's `reference_check`: passed, max_abs, max_rel, lse_max_abs (None with
    lse_reason when the backend returns no lse), tolerance {atol, rtol}, reference (who the oracle was)."""
    tol = bounds(dtype, seq_k)
    ok, max_abs, max_rel, why = compare(out, ref_out, tol["atol"], tol["rtol"])
    res = {"passed": ok, "max_abs": max_abs, "max_rel": max_rel, "lse_max_abs": None, "tolerance": tol,
           "reference": reference}
    if undefined := int(torch.isnan(ref_out).sum()):
        res["undefined"] = undefined
    if lse is None or ref_lse is None:
        res["lse_reason"] = lse_reason or "the reference returns no lse"
    else:
        lse_ok, lse_abs, _, lse_why = compare(lse, ref_lse, tol["lse_atol"], 0.0)
        res["lse_max_abs"] = lse_abs
        res["passed"] = ok and lse_ok
        why = why or (f"lse: {lse_why}" if lse_why else None)
    if why:
        res["why"] = why
    return res
