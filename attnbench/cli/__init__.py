"""The attnbench command line: parse, call the library, print.

Every command raises UsageError for bad input; main() turns it into one line on stderr and
exit code 2 (no traceback).
"""

from __future__ import annotations

import json
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


# ---------------------------------------------------------------- shared options
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (auto: cuda when visible).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("list")
def list_cmd(
    json_out: Json = False,
    device: Device = "auto",
    models: Annotated[bool, typer.Option("--models", help="List the model presets of `run --model` instead.")] = False,
) -> None:
    """Every variant: family, description, complexity, backends and their availability here.

    A backend not available here is marked ✗ with the reason (a reason many share is given once,
    below the table).

    Examples:

      attnbench list

      attnbench list --device cpu

      attnbench list --json | jq '.[] | select(.family == "sparse") | .name'
    """
    if models:
        from attnbench.report.formodel import list_models

        list_models(out_console, json_out)
        return

    from rich.markup import escape

    from attnbench.cli.reasons import unavailable_reasons
    from attnbench.cli.tables import list_rows, variants_table
    from attnbench.run.session import resolve_device

    rows = list_rows(resolve_device(device))
    if json_out:
        print(json.dumps(rows, indent=2))
    else:
        why = unavailable_reasons(rows)
        out_console.print(variants_table(rows, why.inline))
        for note in why.notes:
            out_console.print(f"[dim]{escape(note)}[/]", highlight=False)


@app.command()
def env(json_out: Json = False, device: Device = "auto") -> None:
    """The environment a result depends on (versions, device, threads, NVML).

    Examples:

      attnbench env

      attnbench env --json > env.json

      attnbench --version
    """
    from attnbench.measure.env import capture
    from attnbench.run.session import resolve_device

    e = capture(resolve_device(device))
    if json_out:
        print(json.dumps(e, indent=2))
    else:
        for k, v in e.items():
            out_console.print(f"[bold]{k:>12}[/]  {v}")


# Commands that live in modules of their own, imported explicitly: each exposes register(app),
# `kernels` is a command group of its own (typer's add_typer).
from attnbench.cli import cp_plan, dist, gate, gpucheck, kernels, profile, recommend, report, sweep, tools  # noqa: E402

app.add_typer(kernels.app, name="kernels")
for _module in (sweep, report, gate, tools, profile, dist, recommend, gpucheck, cp_plan):
    _module.register(app)


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
