"""Is an ok record correct? The one judgement that every view making a speed claim applies (report,
`show`, `compare`, the gate, `ab`, `recommend`, the run's own summary): a wrong record keeps its
timing for the record but never enters a speedup, crossover, fit, verdict, comparison or pick.

States of one record:
  correct      its error against its own oracle is within the budget;
  wrong        beyond it, or the definition's reference check it carries failed (the reason says by how much);
  not checked  its error was not measured (the fp64 reference too large, a backward-only mode, an
               approximation's own formulation, records written before that error was recorded);
  not ok       the case did not run (oom, error, unsupported...): those are reported as failures, not judged.

Which error: the record's `error` (run/case.compute_error) holds
  rel_l2       against the variant's own reference in fp64: exact variants (masks, biases and
               rotations included: a sliding window is held to its windowed reference);
  own_rel_l2   approximations (linformer, performer, linear, reformer): against their own eager
               formulation fed the fp64 inputs — an approximation is correct when it computes what it
               claims to compute;
  full_rel_l2  against full softmax attention: the distance of a pattern or an approximation from exact
               attention (its approximation error), a separate quantity, never a correctness criterion.
The run names the key it holds that error under (`judged_by`). Records written before it did: an
approximation's record without `own_rel_l2` is not checked (its rel_l2 is its approximation error);
it is known as one from `own_reason`, from the results header's catalogue (`_exact`, set by
report/catalogue.annotate) or, for files without either, from rel_l2 == full_rel_l2 (its reference is
full attention itself; an old pattern record whose window covers every key reads the same, and is
left not checked too).

Budget: core/tolerance.tolerance(dtype, seq_k), relative L2, K units of the dtype's roundoff plus K
float32 units × √Lk. A backend that computes float32 dots in TF32 on a GPU (the record's error says
`dots: tf32`) is held to TF32's budget (10 mantissa bits, u = 2⁻¹¹): an exact float32 budget would
call every TF32 kernel wrong. Records carrying a `reference_check` (a FlashInfer definition's
reference) are wrong when its `passed` is false, whatever their own error.

Honest limits: the budget is over the whole output (relative L2); a few wrong elements in a large
output can stay under it. A bwd or fwd+bwd record has no measured error, so it is not checked even
when the same kernel's forward is wrong. Imports nothing but core (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnbench.core.tolerance import tolerance

Reason = str | None

CORRECT, WRONG, NOT_CHECKED, NOT_OK = "correct", "wrong", "not checked", "not ok"


@dataclass(frozen=True)
class Judgement:
    """The judgement of one record: its state and, unless correct, why."""

    state: str
    reason: str = ""

    @property
    def wrong(self) -> bool:
        return self.state == WRONG


def budget(record: dict) -> tuple[float, str]:
    """(the largest relative L2 error allowed, the dtype it is the budget of)."""
    err = record.get("error") or {}
    dtype = "tfloat32" if err.get("dots") == "tf32" else str(record.get("dtype") or "float32")
    return tolerance(dtype, int(record.get("seq_k") or 1)), dtype


def judge(record: dict) -> Judgement:
    """The record's state (module doc): correct, wrong with its reason, not checked with why, or not ok."""
    if record.get("status") != "ok":
        return Judgement(NOT_OK, f"status {record.get('status')}")
    failed = _reference_check(record.get("reference_check"))
    if failed:
        return Judgement(WRONG, failed)
    err = record.get("error") or {}
    value, why_not = _own_error(record, err)
    if value is None:
        return Judgement(NOT_CHECKED, why_not)
    limit, dtype = budget(record)
    if not value <= limit:  # NaN is wrong too
        return Judgement(WRONG, f"error {value:.1e} > {limit:.1e} allowed for {dtype} at Lk {record.get('seq_k')}")
    return Judgement(CORRECT)


def why_wrong(record: dict) -> Reason:
    """The reason a record is wrong, or None (correct, not checked or not ok)."""
    j = judge(record)
    return j.reason if j.wrong else None


def _own_error(record: dict, err: dict) -> tuple[float | None, str]:
    """(the error against the record's own oracle, why it is missing)."""
    if err.get("judged_by") in err:  # declared by the run (run/case.compute_error)
        return err[err["judged_by"]], ""
    if "own_rel_l2" in err:
        return err["own_rel_l2"], ""
    approximation = "own_reason" in err or record.get("_exact") is False or (
        "full_rel_l2" in err and err.get("rel_l2") == err["full_rel_l2"])
    if approximation:
        return None, err.get("own_reason") or "an approximation's error against its own formulation not measured"
    if "rel_l2" in err:
        return err["rel_l2"], ""
    if err.get("reason"):
        return None, str(err["reason"])
    return None, "error not measured" + ("" if record.get("mode") in ("fwd", "decode", None) else
                                         f" (a {record.get('mode')} case: measured in fwd and decode only)")


def _reference_check(check: dict | None) -> Reason:
    """Why a failed definition reference check makes the record wrong (None: passed or absent)."""
    if not check or check.get("passed") is not False:
        return None
    parts = [f"{k} {check[k]:.1e}" for k in ("max_abs", "max_rel", "lse_max_abs")
             if isinstance(check.get(k), (int, float))]
    tol = check.get("tolerance")
    tol_text = ", ".join(f"{k} {v:g}" for k, v in tol.items()) if isinstance(tol, dict) else \
        (f"{tol:g}" if isinstance(tol, (int, float)) else "")
    ref = f" ({check['reference']})" if check.get("reference") else ""
    return (f"fails its definition's reference{ref}: " + (", ".join(parts) or "mismatch")
            + (f" beyond tolerance {tol_text}" if tol_text else ""))


def split(records: list[dict]) -> tuple[list[dict], list[tuple[dict, str]]]:
    """(the records a speed claim may use: every record but the wrong ones, (wrong record, reason))."""
    kept, wrong = [], []
    for r in records:
        reason = why_wrong(r)
        if reason is None:
            kept.append(r)
        else:
            wrong.append((r, reason))
    return kept, wrong


def case_label(r: dict) -> str:
    """One record named in a line: variant:backend dtype, its lengths and mode, its parameters."""
    lengths = f"L{r.get('seq_q')}" + (f"×{r.get('seq_k')}" if r.get("seq_k") != r.get("seq_q") else "")
    params = "".join(f" {k}={v}" for k, v in sorted((r.get("params") or {}).items()))
    return f"{r.get('variant')}:{r.get('backend')} {r.get('dtype')} {lengths} {r.get('mode')}{params}"


def left_out_lines(wrong: list[tuple[dict, str]], what: str = "speedups, crossovers, fits and verdicts",
                   limit: int = 8) -> list[str]:
    """One line per wrong record left out of `what` (at most `limit`, then a count of the rest)."""
    lines = [f"wrong, left out of {what}: {case_label(r)} — {reason}" for r, reason in wrong[:limit]]
    if len(wrong) > limit:
        lines.append(f"… and {len(wrong) - limit} more wrong records left out of {what}")
    return lines
