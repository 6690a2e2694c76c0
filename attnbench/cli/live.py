"""What `attnbench run` shows while it runs (run/view.py's RunView, for the command line).

- On a terminal (stdout and stderr both): a rich Live display on stderr, the progress bar with the
  model's ETA and, under it, a table that gains each finished case's row (the latest that fit).
- Otherwise (piped, CI logs): one plain line per finished case (variant, backend, shape, status,
  median, memory), flushed at once, on stdout when stdout carries the table, else on stderr.
- Quiet: nothing while it runs (the command prints only errors and the results file's path).

Before measuring, each prints the plan (cli/plan_view.py) on stderr and, when the plan is
predicted over 10 minutes, asks for confirmation on a terminal (unless --yes) or, not on a
terminal, says so in one line and goes on.
"""

from __future__ import annotations

import sys
from typing import TextIO

import typer
from rich.console import Console, Group
from rich.live import Live

from attnbench.cli.plan_view import needs_confirmation, print_plan
from attnbench.core.units import fmt_bytes, fmt_len, fmt_ms
from attnbench.run.forecast import Plan, fmt_duration
from attnbench.run.view import RunView, eta_text, make_progress

EXIT_DECLINED = 1  # the user answered no to the confirmation: nothing was run or written


class PlanFirst(RunView):
    """The plan and its confirmation, shared by the views below."""

    def __init__(self, console: Console, *, yes: bool = False, verbose: bool = False, quiet: bool = False):
        super().__init__(console)
        self.yes, self.verbose, self.quiet = yes, verbose, quiet
        self.total, self.done, self.eta_s = 0, 0, None

    def plan(self, plan: Plan) -> None:
        if not self.quiet:
            print_plan(plan, self.console, self.verbose)
        if not needs_confirmation(plan) or self.yes:
            return
        how_long = f"the plan is predicted to take {fmt_duration(plan.seconds)} (over 10 min)"
        if sys.stdin.isatty() and self.console.is_terminal:
            if not typer.confirm(f"{how_long}; run it?", default=False, err=True):
                self.console.print("not run: declined (nothing written)", markup=False, highlight=False)
                raise typer.Exit(EXIT_DECLINED)
        elif not self.quiet:
            self.console.print(f"{how_long}; not a terminal, so no confirmation is asked: running (--yes "
                               "silences this)", markup=False, highlight=False)

    def begin(self, total: int, eta_s: float | None) -> None:
        self.total, self.eta_s = total, eta_s

    def running(self, description: str) -> None:
        pass

    def progressed(self, steps: int, eta_s: float | None) -> None:
        self.done += steps
        self.eta_s = eta_s


def case_line(rec: dict) -> str:
    """variant/backend shape mode: status, median, memory (the reason when not ok)."""
    L = fmt_len(rec["seq_q"]) if rec["seq_q"] == rec["seq_k"] else f"{fmt_len(rec['seq_q'])}×{fmt_len(rec['seq_k'])}"
    shape = f"B{rec['batch']} H{rec['heads']}/{rec['kv_heads']} L{L} D{rec['head_dim']} {rec['dtype']}"
    head = f"{rec['variant']}/{rec['backend']} {shape} {rec['mode']}: {rec['status']}"
    if rec["status"] != "ok":  # a failure's reason whole (it says why); a skip's or an unsupported's cut
        from attnbench.report.analysis import FAILURES

        reason = " ".join(str(rec.get("reason") or "").split())
        return f"{head} ({reason if rec['status'] in FAILURES else reason[:100]})"
    med = (rec.get("latency_ms") or {}).get("median")
    from attnbench.core.correctness import why_wrong

    wrong = why_wrong(rec)
    return (f"{head}, median {fmt_ms(med)} ms, mem {fmt_bytes(rec.get('peak_mem_bytes'))}"
            + (f" — WRONG OUTPUT: {wrong}" if wrong else ""))


def detail_line(rec: dict) -> str | None:
    """`-v`: how the case was measured (samples, stop rule, setup, first call, wall, kernel, error),
    then the command that reruns it (every status: a failed case is the one to rerun)."""
    rerun = f"\n    rerun: {rec['repro']}" if rec.get("repro") else ""
    if rec["status"] != "ok":
        return rerun[1:] or None
    lat, timing, err = rec.get("latency_ms") or {}, rec.get("timing") or {}, rec.get("error") or {}
    bits = [
        f"n={lat.get('n')} ({timing.get('stopped_by', '?')})",
        f"setup {fmt_ms(rec.get('setup_ms'))} ms",
        f"first call {fmt_ms(rec.get('first_call_ms'))} ms",
        f"wall {rec.get('wall_s') or 0:.1f} s",
        f"kernel {rec.get('kernel') or '-'}",
    ]
    if "rel_l2" in err:
        bits.append(f"rel_l2 {err['rel_l2']:.1e}")
    elif err.get("reason"):
        bits.append(f"error not measured: {err['reason']}")
    return "    " + ", ".join(bits) + rerun


class LineView(PlanFirst):
    """One plain line per finished case, flushed at once (CI logs, `| cat`)."""

    def __init__(self, console: Console, stream: TextIO, **kw):
        super().__init__(console, **kw)
        self.stream = stream

    def __enter__(self) -> "LineView":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def finished(self, record: dict) -> None:
        if self.quiet:
            return
        eta = f" eta {eta_text(self.eta_s)}" if self.done < self.total else ""
        lines = [f"[{self.done}/{self.total}{eta}] {case_line(record)}"]
        if self.verbose and (d := detail_line(record)):
            lines.append(d)
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()


class LiveView(PlanFirst):
    """A rich Live display on a terminal: the progress bar, and the finished cases under it."""

    def __init__(self, console: Console, columns: list[str] | None = None, **kw):
        super().__init__(console, **kw)
        self.columns = columns
        self.records: list[dict] = []
        self.live: Live | None = None

    def __enter__(self) -> "LiveView":
        self.progress = make_progress(self.console, transient=False)
        self.live = Live(self._render(), console=self.console, transient=True, refresh_per_second=4)
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def _render(self):
        from attnbench.cli.tables import results_table

        rows = max(3, self.console.size.height - 8)
        if not self.records:
            return self.progress
        return Group(self.progress, results_table(self.records[-rows:], title=None, columns=self.columns))

    def begin(self, total: int, eta_s: float | None) -> None:
        super().begin(total, eta_s)
        self.task = self.progress.add_task("attnbench", total=total, eta=eta_text(eta_s))

    def running(self, description: str) -> None:
        self.progress.update(self.task, description=description)

    def progressed(self, steps: int, eta_s: float | None) -> None:
        super().progressed(steps, eta_s)
        self.progress.advance(self.task, steps)
        self.progress.update(self.task, eta=eta_text(eta_s))

    def finished(self, record: dict) -> None:
        self.records.append(record)
        if self.verbose and (d := detail_line(record)):
            self.live.console.print(case_line(record) + "\n" + d, markup=False, highlight=False)
        self.live.update(self._render())


def make_view(err_console: Console, *, machine_stdout: bool, quiet: bool, verbose: bool, yes: bool,
              columns: list[str] | None) -> RunView:
    """The view for this terminal: live on a terminal, lines when piped (stdout unless it carries
    JSON or CSV), nothing but the plan's confirmation when quiet."""
    kw = {"yes": yes, "verbose": verbose, "quiet": quiet}
    if not quiet and sys.stdout.isatty() and err_console.is_terminal:
        return LiveView(err_console, columns, **kw)
    wide = err_console if err_console.is_terminal else Console(stderr=True, width=200)  # logs are not cut at 80
    return LineView(wide, sys.stderr if machine_stdout else sys.stdout, **kw)
