"""Conventions shared by the commands: `--version`, readable metavars.

`--version` reads installed package metadata (importlib.metadata), never imports torch or
triton: it stays as fast as `--help`.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from pathlib import PurePath

from typer.core import TyperGroup

# Metavars shown in --help: what a value looks like, not its Python type.
LIST = "LIST"  # comma-separated names, e.g. mha,flash
LENGTHS = "LENGTHS"  # 1k..64k doubles, 1k,3k,8k lists
N = "N"
SECONDS = "SECONDS"
FILE = "FILE"
DIR = "DIR"
SIZE = "SIZE"  # 8GiB, 512MiB
PCT = "PCT"  # 10% or 0.10


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def version_text() -> str:
    """'attnbench X' and, on a second line, the torch and triton installed (or 'not installed')."""
    own = _installed("attnbench")
    if own is None:  # run from a source tree that is not installed
        from attnbench import __version__ as own
    deps = ", ".join(f"{n} {_installed(n) or 'not installed'}" for n in ("torch", "triton"))
    return f"attnbench {own}\n{deps}"


# ---------------------------------------------------------------- readable help
_BY_TYPE = {int: N, float: "NUM", str: "TEXT"}


def _option_metavar(p) -> str | None:
    """The metavar an option without one gets: nothing for a flag, N for an integer, ...
    (typer would print the Python type: <int>, <bool>, <list[str]>)."""
    if getattr(p, "is_flag", False):
        return ""
    ann = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    args = getattr(ann, "__args__", None) or ()
    if getattr(ann, "__origin__", None) is list and args:
        ann = args[0]
    if isinstance(ann, type) and issubclass(ann, PurePath):
        return "PATH"
    return _BY_TYPE.get(ann) if isinstance(ann, type) else None


def _argument_usage(p):
    """An argument in the usage line as click writes it: NAME, [NAME], NAME... (typer: {name})."""
    def pieces(ctx) -> list[str]:
        name = p.metavar or p.name.upper()
        name += "..." if p.nargs != 1 and not name.endswith("...") else ""
        return [name if p.required else f"[{name}]"]

    return pieces


def help_text(text: str | None) -> str | None:
    """A docstring laid out for typer's rich help: prose paragraphs joined into one line each
    (rich keeps single line breaks), indented example lines kept as they are and kept indented
    (typer dedents the text after the first paragraph again: a leading blank line stops that)."""
    if not text:
        return text
    paras = inspect.cleandoc(text).split("\n\n")
    out = [p if p.startswith("\b") or any(ln[:1].isspace() or ln[:2] in ("- ", "* ", "• ") for ln in p.splitlines())
           else " ".join(ln.strip() for ln in p.splitlines()) for p in paras]  # kept: examples, lists
    if len(out) > 1 and any(ln[:1].isspace() for p in out[1:] for ln in p.splitlines()):
        out[1] = "\n" + out[1]
    return "\n\n".join(out)


def readable(command) -> None:
    """Give every parameter of `command` (and of its subcommands) a readable metavar; lay its
    help out for rich (help_text)."""
    for sub in getattr(command, "commands", {}).values():
        readable(sub)
    if not getattr(command, "_readable_help", False):
        command.help = help_text(command.help)
    for p in command.params:
        _fill(p)
    if not getattr(command, "_readable_help", False):  # click creates --help lazily: fill it then
        command._readable_help = True
        make = command.get_help_option

        def help_option(ctx, make=make):
            opt = make(ctx)
            if opt is not None:
                _fill(opt)
            return opt

        command.get_help_option = help_option


def _fill(p) -> None:
    if p.param_type_name == "argument":
        if p.metavar is None:
            p.metavar = p.name.upper() + ("..." if p.nargs != 1 else "")
        p.get_usage_pieces = _argument_usage(p)
        p.display_type_rich = lambda ctx: None  # the metavar says it; typer would add <list[Path]>
    elif p.metavar is None:
        p.metavar = _option_metavar(p)


class ReadableGroup(TyperGroup):
    """The root command group; it makes every command's metavars readable (see `readable`),
    the options typer adds later (--install-completion, --show-completion) included."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        readable(self)

    def get_params(self, ctx):
        for p in self.params:
            _fill(p)
        return super().get_params(ctx)
