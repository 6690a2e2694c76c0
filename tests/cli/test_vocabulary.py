"""One vocabulary: an option name has one value, type and meaning in every command, and
docs/cli.md lists every option once with the commands that take it."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from attnbench.cli.vocabulary import first_sentence, table, uses

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_the_tree_is_walked():
    commands = {u.command for u in uses()}
    assert {"run", "frontier", "gate", "baseline save", "kernels compile", "show-pattern"} <= commands
    assert len(commands) >= 17


def test_same_name_same_metavar_type_and_meaning():
    by = defaultdict(set)
    for u in uses():
        by[u.name].add((u.metavar, u.kind, u.meaning))
    differs = {name: sorted(v) for name, v in by.items() if len(v) > 1}
    assert not differs, differs


def test_the_walker_reads_kinds_and_sentences():
    """What the check above compares is read from the tree (kinds) and the help (sentences)."""
    assert first_sentence("Seconds one call may take; a longer one ends it. More.") == \
        "Seconds one call may take; a longer one ends it."
    kinds = {u.kind for u in uses() if u.name in ("--seq", "--batch", "--force", "--out")}
    assert kinds == {"str", "list[str]", "flag", "Path"}


def _doc_rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `(-[^`]+)` \|", line)
        if m:
            assert m.group(1) not in rows, f"docs/cli.md lists {m.group(1)} twice"
            rows[m.group(1)] = line
    return rows


def test_docs_list_every_option_once_with_its_commands():
    doc = _doc_rows()
    want = {line.split(" | ")[0][3:-1]: line for line in table().splitlines()[2:]}
    assert set(doc) == set(want), f"missing: {sorted(set(want) - set(doc))}; stale: {sorted(set(doc) - set(want))}"
    stale = [name for name in want if doc[name] != want[name]]
    assert not stale, f"docs/cli.md rows out of date (python -m attnbench.cli.vocabulary): {stale}"


@pytest.mark.parametrize("old", ["--budget", "--results", "--allow-mixed-env", "--variant", "--metrics"])
def test_old_spellings_are_gone(old):
    assert old not in {u.name for u in uses()}
