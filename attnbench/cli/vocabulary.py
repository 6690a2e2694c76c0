"""Every option of every command, read from the command tree: what docs/cli.md lists and what
tests/cli/test_vocabulary.py checks (one name, one meaning, one type and metavar).

`python -m attnbench.cli.vocabulary` prints the table of docs/cli.md's "Every option" section.
Torch-free, like --help.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Use:
    """One option as one command declares it."""

    command: str  # "run", "baseline save"
    name: str  # "--seq", "-q"
    metavar: str
    kind: str  # the value's type: flag, int, float, str, list[str], Path, list[Path]
    meaning: str  # the first sentence of its help


def _kind(p) -> str:
    if p.is_flag:
        return "flag"
    ann = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    text = getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann)
    return re.sub(r"\b(typing|pathlib)\.", "", str(text)).replace("PosixPath", "Path")


def first_sentence(text: str | None) -> str:
    """The help's first sentence (up to '. ' or the end), whitespace collapsed."""
    text = " ".join((text or "").split())
    m = re.match(r"(.+?\.)(\s|$)", text)
    return m.group(1) if m else text


def uses() -> list[Use]:
    """Every visible option of every command (the root's completion options excluded)."""
    import typer.main

    from attnbench.cli import app

    out: list[Use] = []

    def walk(cmd, path: list[str]) -> None:
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            walk(sub, path + [name])
        if not path:
            return
        for p in cmd.params:
            if p.param_type_name != "option" or p.hidden:
                continue
            for name in (*p.opts, *p.secondary_opts):
                out.append(Use(" ".join(path), name, p.metavar or "", _kind(p), first_sentence(p.help)))

    walk(typer.main.get_command(app), [])
    return out


def table() -> str:
    """docs/cli.md's table: one row per option name, the commands that take it."""
    by: dict[str, list[Use]] = {}
    for u in uses():
        by.setdefault(u.name, []).append(u)
    rows = ["| option | value | meaning | commands |", "|---|---|---|---|"]
    for name in sorted(by, key=lambda n: n.lstrip("-").lower()):
        u = by[name][0]
        value = u.metavar or ("flag" if u.kind == "flag" else u.kind)
        commands = ", ".join(sorted({x.command for x in by[name]}))
        cells = (f"`{name}`", f"`{value}`", u.meaning, commands)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table(), end="")
