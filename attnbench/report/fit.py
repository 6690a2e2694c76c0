"""Terminal tables that stay readable at any width: a word is never split, columns drop instead.

`FittedTable` is a rich renderable that lays its table out for the width it is given when printed
(a console's width, a Live region's): every column is at least as wide as its longest word (a
whitespace-separated token of any cell or of the header: `2.90e-07`, `llama-3.1-8b-instruct`), so
cells wrap only between words; when the columns' least widths do not fit, the columns after the
first `keep` are dropped from the right (the least important last in every table here) until they
do, and the caption names what was left out. Prose columns (a failure's reason, a note) may fold a
word longer than FOLD_WIDTH (a path), so a long path never pushes the reason out. Honest limit: a
single word wider than the whole terminal is still folded (nothing else can show it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text

EDGE = 3  # a column's share of the box: one padding space each side and one border
FOLD_WIDTH = 20  # a prose column (a reason, a note) may fold a longer word (a path) at this width


def _plain(cell: str) -> str:
    return Text.from_markup(cell).plain if "[" in cell else cell


def _longest(cell: str, sep: str | None) -> int:
    return max((len(w) for w in _plain(cell).split(sep)), default=0)


def fit(heads: list[str], rows: list[list[str]], width: int, keep: int = 1,
        prose: frozenset[int] = frozenset(), drop: tuple[int, ...] = ()) -> tuple[list[int], list[int]]:
    """(indices of the columns kept, the width of every column) for a table at most `width` wide:
    each column as wide as its longest line, narrowed widest first but never below its longest word
    (over the header and every cell); while even the longest words overflow, columns drop in the
    order `drop` gives (default: from the right), never the first `keep`. A `prose` column's least
    width is at most FOLD_WIDTH: a path in a reason may fold, a number never does."""
    least = [max([_longest(h, None)] + [_longest(r[i], None) for r in rows]) for i, h in enumerate(heads)]
    least = [min(w, FOLD_WIDTH) if i in prose else w for i, w in enumerate(least)]
    full = [max([_longest(h, "\n")] + [_longest(r[i], "\n") for r in rows]) for i, h in enumerate(heads)]
    kept = list(range(len(heads)))
    order = [i for i in (drop or range(len(heads) - 1, -1, -1)) if i >= keep]
    while order and sum(least[i] + EDGE for i in kept) + 1 > width:
        kept.remove(order.pop(0))
    widths = list(full)
    excess = sum(widths[i] + EDGE for i in kept) + 1 - width
    while excess > 0:
        i = max((i for i in kept if widths[i] > least[i]), key=lambda i: widths[i], default=None)
        if i is None:
            break
        widths[i] -= 1
        excess -= 1
    return kept, widths


@dataclass
class FittedTable:
    """A table of plain-string cells (rich markup allowed) laid out for the width it is printed at.
    `justify` by column index; `keep`: the leading columns never dropped; `prose`: the columns of
    text (reasons, notes) whose over-long words may fold; `drop`: the order columns drop in."""

    title: str | None
    heads: list[str]
    rows: list[list[str]] = field(default_factory=list)
    justify: dict[int, str] = field(default_factory=dict)
    keep: int = 1
    prose: frozenset[int] = frozenset()
    drop: tuple[int, ...] = ()  # the order columns drop in when narrow (default: from the right)
    table_kw: dict = field(default_factory=dict)

    def add_row(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def __rich_console__(self, console, options):
        width = options.max_width
        kept, widths = fit(self.heads, self.rows, width, self.keep, self.prose, self.drop)
        dropped = [self.heads[i] for i in range(len(self.heads)) if i not in kept]
        caption = (f"left out at {width} columns: {'; '.join(dropped)} (a wider terminal shows them)"
                   if dropped else None)
        t = Table(title=self.title, caption=caption, **self.table_kw)
        for i in kept:
            t.add_column(self.heads[i], justify=self.justify.get(i, "left"), width=max(1, widths[i]),
                         overflow="fold")
        for r in self.rows:
            t.add_row(*(r[i] for i in kept))
        yield t
