"""The plan `run` prints before measuring (and `run --dry-run` prints alone): a table of the
predicted seconds per case (one row per variant/backend/shape, one column per length), the
total, the predicted peak memory, and the cases that will not run, summarised once per reason."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from attnbench.core.units import fmt_bytes, fmt_len
from attnbench.run.forecast import CONFIRM_OVER_S, CaseForecast, Plan, fmt_duration, reason_group


def _length(c: CaseForecast) -> str:
    p = c.case.problem
    if p.param("batch_spec") is not None:  # a mixed batch: its spec says its lengths
        return p.param("batch_spec")
    return fmt_len(p.seq_k) + " cache" if p.mode == "decode" else (
        fmt_len(p.seq_q) if p.seq_q == p.seq_k else f"{fmt_len(p.seq_q)}×{fmt_len(p.seq_k)}")


def _row_key(c: CaseForecast) -> tuple:
    p = c.case.problem
    shape = (f"B{p.batch}", f"H{p.heads}/{p.kv_heads}", f"D{p.head_dim}", p.dtype, "causal" if p.causal else "",
             *(f"{k}={v}" for k, v in p.params))
    return (f"{c.case.variant}/{c.case.backend}", p.mode, shape)


def _shape_text(shape: tuple, common: set) -> str:
    """The shape's fields that differ between the rows of the same variant."""
    return " ".join(f for f in shape if f and f not in common)


def _common_fields(keys) -> dict[str, set]:
    """Per variant: the shape fields all its rows share (not shown)."""
    out: dict[str, set] = {}
    for k in keys:
        variant = k[0].split("/")[0]
        out[variant] = out[variant] & set(k[2]) if variant in out else set(k[2])
    return out


def _secs(s: float) -> str:
    return f"{s:.2g} s" if s < 9.5 else fmt_duration(s)


def summary_line(plan: Plan) -> str:
    n, run = len(plan.cases), len(plan.to_run)
    peak = plan.peak
    peak_s = (
        f" · peak memory ~{fmt_bytes(peak.peak_bytes)} ({peak.case.variant}/{peak.case.backend} "
        f"{_length(peak)} {peak.case.problem.mode})" if peak else ""
    )
    rounds = f" × {plan.rounds} rounds" if plan.rounds > 1 else ""
    return (
        f"plan: {n} case{'s' * (n != 1)} on {plan.device}, {run} to run{rounds}, {n - run} not run · predicted "
        f"{fmt_duration(plan.seconds)} (time budget {plan.time_budget:g} s per case){peak_s}"
    )


def plan_table(plan: Plan) -> Table | None:
    """Rows: variant/backend, mode, shape; columns: lengths; cells: predicted seconds (or 'skip')."""
    rows: dict[tuple, dict[str, CaseForecast]] = {}
    lengths: dict[str, int] = {}
    for c in plan.cases:
        if c.status in ("unsupported", "unavailable"):
            continue
        rows.setdefault(_row_key(c), {})[_length(c)] = c
        lengths.setdefault(_length(c), c.case.problem.seq_q * 10**7 + c.case.problem.seq_k)
    if not rows:
        return None
    cols = sorted(lengths, key=lengths.get)
    common = _common_fields(rows)
    shown = {k: _shape_text(k[2], common[k[0].split("/")[0]]) for k in rows}
    shapes = {v for v in shown.values() if v}
    t = Table(title="predicted seconds per case", header_style="bold", pad_edge=False, title_justify="left")
    t.add_column("variant/backend", no_wrap=True)
    t.add_column("mode", no_wrap=True)
    if shapes:
        t.add_column("shape", no_wrap=True)
    for L in cols:
        t.add_column(L, justify="right", no_wrap=True)
    t.add_column("peak mem", justify="right", no_wrap=True)
    for key, cells in rows.items():
        vals = [
            "" if L not in cells else (_secs(cells[L].seconds) if cells[L].status == "run" else "[yellow]skip[/]")
            for L in cols
        ]
        peaks = [c.peak_bytes for c in cells.values() if c.status == "run" and c.peak_bytes is not None]
        head = [escape(key[0]), key[1]] + ([escape(shown[key])] if shapes else [])
        t.add_row(*head, *vals, fmt_bytes(max(peaks)) if peaks else "-")
    return t


def not_run_lines(plan: Plan) -> list[str]:
    """The cases that will not run, one line per reason (numbers blanked to group them)."""
    groups: dict[tuple[str, str], list[CaseForecast]] = {}
    for c in plan.cases:
        if c.status != "run":
            groups.setdefault((c.status, reason_group(c.decision)), []).append(c)
    lines = []
    for (status, _), cs in groups.items():
        who = list(dict.fromkeys(f"{c.case.variant}/{c.case.backend}" for c in cs))
        where = ", ".join(who[:6]) + (f" and {len(who) - 6} more" if len(who) > 6 else "")
        example = cs[0].decision if len(cs) == 1 else f"{cs[0].decision} (e.g. at {_length(cs[0])})"
        lines.append(f"{len(cs)} {status}: {where} — {example}")
    return lines


def case_lines(plan: Plan) -> list[str]:
    """One line per case (`run -v`): predicted call, case seconds, peak memory, decision."""
    out = []
    for c in plan.cases:
        p = c.case.problem
        call = f"call ~{c.call_seconds * 1e3:.3g} ms" if c.call_seconds is not None else "call -"
        out.append(
            f"{c.case.variant}/{c.case.backend} {p.short()} {p.mode}{_layout(p)}: "
            + (f"{call}, case ~{_secs(c.seconds)}, peak ~{fmt_bytes(c.peak_bytes)}" if c.status == "run"
               else f"{c.status}: {c.decision}")
        )
    return out


def _layout(p) -> str:
    """' paged KV' / ' dense KV' for a case with a KV-cache layout, else nothing."""
    layout = dict(p.params).get("kv_layout")
    return f" {layout} KV" if layout else ""


def print_plan(plan: Plan, console, verbose: bool = False, startup_s: float | None = None) -> None:
    """The plan as the user sees it before a run (or alone with --dry-run); startup_s: the seconds
    this plan spent measuring references (0: they came from the cache)."""
    console.print(summary_line(plan), markup=False, highlight=False)
    if verbose:
        for line in case_lines(plan):
            console.print(f"  {line}", markup=False, highlight=False)
    else:
        t = plan_table(plan)
        if t is not None:
            console.print(t)
    lines = not_run_lines(plan)
    if lines:
        console.print("not run:", markup=False, highlight=False)
        for line in lines:
            console.print(f"  {line}", markup=False, highlight=False)
    load = load_note(plan.device)
    if load:
        console.print(load, style="dim", markup=False, highlight=False)
    if plan.startup is not None:
        console.print(
            f"includes start-up ~{_secs(plan.startup.seconds)} (this command's own start, the worker's and its "
            "in-run references; "
            f"{plan.startup.note}); the run measures its references again"
            + (", and the next plan reuses these" if startup_s else ""), style="dim", markup=False,
            highlight=False)


def load_note(device: str) -> str | None:
    """A line when other processes keep the CPU busy: the prediction assumes the speed of the
    in-run references, measured now; more load later makes the run slower (the ETA corrects)."""
    import os

    if device != "cpu" or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= cores:
        return None
    return (f"the machine is loaded (load average {load:.1f} on {cores} cores): the prediction assumes the speed "
            "measured now; the ETA corrects it as cases finish")


def needs_confirmation(plan: Plan) -> bool:
    return plan.seconds > CONFIRM_OVER_S
