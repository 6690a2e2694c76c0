"""What a run shows while it runs: the plan before measuring, then progress and each finished case.

:class:`RunView` is the interface run_sweep talks to; this default shows a transient rich progress
bar with the model's ETA (forecast.Eta) on a console and says nothing about the plan. The CLI
passes its own views (cli/live.py: a live table on a terminal, one line per case when piped).
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from attnbench.run.forecast import Plan, fmt_duration


class RunView:
    """The default view: a transient progress bar (cases done / total, elapsed, model ETA)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def plan(self, plan: Plan) -> None:
        """Called once the plan is known, before anything is measured; may raise to stop the run."""

    def __enter__(self) -> "RunView":
        self.progress = make_progress(self.console)
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def begin(self, total: int, eta_s: float | None) -> None:
        self.task = self.progress.add_task("attnbench", total=total, eta=eta_text(eta_s))

    def running(self, description: str) -> None:
        self.progress.update(self.task, description=description)

    def progressed(self, steps: int, eta_s: float | None) -> None:
        self.progress.advance(self.task, steps)
        self.progress.update(self.task, eta=eta_text(eta_s))

    def finished(self, record: dict) -> None:
        """A case's final record (all its rounds), just written."""


def eta_text(eta_s: float | None) -> str:
    return "-" if eta_s is None else fmt_duration(eta_s)


def make_progress(console: Console, transient: bool = True) -> Progress:
    return Progress(
        TextColumn("{task.description}", style="cyan"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("eta {task.fields[eta]}"),
        console=console,
        transient=transient,
    )
