"""The attnbench command line: parse, call the library, print.

Every command raises UsageError for bad input; main() turns it into one line on stderr and
exit code 2 (no traceback).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from attnbench.cli.conventions import ReadableGroup
from attnbench.core.errors import UsageError, say

GATE_COMMANDS = ("compare", "gate", "baseline", "ab")  # usage errors exit 3 (docs/ci.md)

app = typer.Typer(
    name="attnbench",
    cls=ReadableGroup,  # readable metavars (N, LIST, FILE) in every command's --help
    no_args_is_help=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode="rich",  # help panels and examples; rich help costs ~0.25 s of CPU per --help
    help="Benchmark and profile attention mechanisms: latency, memory, FLOPs and error, "
    "on a GPU or the CPU.\n\nExamples:\n\n  attnbench list\n\n"
    "  attnbench run --variants mha,flash,gqa --seq 1k..16k\n\n"
    "  attnbench show results/run-*.jsonl\n\n  attnbench show-pattern bigbird --seq 4k\n\n"
    "Lengths everywhere: 4k = 4096, 1k..64k doubles, 1k,3k,8k lists. NO_COLOR=1 turns colour off.",
)
# Piped output is not cut to 80 columns: tables stay readable in files and CI logs.
out_console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)



@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=lambda v: _version(v),
                     help="Print attnbench's version (and torch's, triton's) and exit."),
    ] = False,
) -> None:
    pass


def _version(wanted: bool) -> None:
    if wanted:
        from attnbench.cli.conventions import version_text

        print(version_text())
        raise typer.Exit()


# One module per command, named after it (cli/<command>.py); each command is a plain function
# registered here, in the order `attnbench --help` lists them (`list` lives in list_cmd: a submodule
# named `list` would shadow the builtin in this package).
from attnbench.cli import (  # noqa: E402
    ab,
    baseline,
    check,
    compare,
    cp_plan,
    env,
    export,
    frontier,
    gate,
    gpu_check,
    kernels,
    list_cmd,
    merge,
    profile,
    recommend,
    report,
    ring,
    run,
    show,
    show_pattern,
)

app.command("list")(list_cmd.list_variants)
app.command("env")(env.env)
app.command("run")(run.run)
app.command("report")(report.report)
app.command("show")(show.show)
app.command("show-pattern")(show_pattern.show_pattern)
app.command("compare")(compare.compare)
app.command("gate")(gate.gate)
app.command("ab")(ab.ab)
app.command("frontier")(frontier.frontier)
app.command("check")(check.check)
app.command("profile")(profile.profile)
app.command("ring")(ring.ring)
app.command("merge")(merge.merge)
app.command("export")(export.export)
app.command("recommend")(recommend.recommend)
app.command("cp-plan")(cp_plan.cp_plan)
app.command("gpu-check")(gpu_check.gpu_check)
app.add_typer(kernels.app, name="kernels")
app.add_typer(baseline.app, name="baseline")


def main(argv: list[str] | None = None) -> int:
    """Entry point: usage errors become one line and exit code 2."""
    from attnbench.core.results import ResultsError
    from attnbench.core.safe_io import EXIT_WRITE, OutputError

    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        rc = app(args=argv, standalone_mode=False, obj={"argv": argv})  # typer.Exit inside returns its code
    except (UsageError, ResultsError, OutputError) as e:
        say(err_console, str(e), "error:")
        gate = bool(argv) and argv[0] in GATE_COMMANDS  # the gate's contract: usage and I/O problems exit 3
        return 3 if gate else EXIT_WRITE if isinstance(e, OutputError) else 2
    except typer.Exit as e:
        return e.exit_code
    except OSError as e:  # a write or read the command did not wrap itself (a full or read-only disk)
        from attnbench.core.safe_io import why

        where = f"'{e.filename}': " if getattr(e, "filename", None) else ""
        say(err_console, f"{where}{why(e)}", "error:")
        return 3 if argv and argv[0] in GATE_COMMANDS else EXIT_WRITE
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except Exception as e:  # click's own errors (typer vendors click, so match by shape)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            msg = " ".join(e.format_message().split())
            say(err_console, msg, "error:")
            gate = bool(argv) and argv[0] in GATE_COMMANDS  # the gate's contract: usage errors exit 3
            return (3 if gate else 2) if e.exit_code == 2 else e.exit_code
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
