"""`attnbench show-pattern`: what one variant attends, in the terminal or as a PNG."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from attnbench.cli import options as O
from attnbench.core.errors import UsageError, say

# The largest length drawn: the picture holds L×L values (float32), 4 GiB at 32k; past it the
# pattern is no more visible than at a shorter length (the gallery looks for one up to 8k).
MAX_SEQ = 8192


def show_pattern(
    variant: Annotated[str, typer.Argument(metavar="VARIANT",
                                           help="A variant with a pattern picture (see `attnbench list`).")],
    seq: O.Seq = None,
    out: O.Out = None,
    param: O.Param = None,
    force: O.Force = False,
) -> None:
    """Render what one variant attends: a mask in two colours, or a bias with a colour map.

    --seq: one length (default 256; a square number for vision variants, at most 8k).
    --out: a PNG (an SVG is written beside it) instead of printing.

    In the terminal the picture is scaled down to fit its width. A mask that attends more
    than 3/4 of the pairs at this length hides its pattern: a warning then suggests a length
    where it attends at most half.

    Examples:

      attnbench show-pattern bigbird --seq 4k

      attnbench show-pattern sliding_window --seq 64 --param window=8 --param sinks=4

      attnbench show-pattern alibi --seq 256 --out alibi.png

      NO_COLOR=1 attnbench show-pattern swin --seq 1024
    """
    from attnbench.report.gallery import picture, render, text_picture
    from attnbench.run.plan import check_params, parse_param_items

    length = _one_length(seq or "256")
    if out is not None and out.suffix.lower() != ".png":
        raise UsageError(f"--out '{out}' must end in .png")
    if out is not None and not out.parent.exists():
        raise UsageError(f"cannot write '{out}': directory '{out.parent}' does not exist")
    if out is not None and not force and (out.exists() or out.with_suffix(".svg").exists()):
        raise UsageError(f"'{out}' (or its .svg) already exists; add --force to overwrite it")
    t, p = picture(variant, length, check_params(parse_param_items(param), (variant,)) if param else None)
    _warn_if_dense(variant, length, t, p)
    if out is None:
        console = Console()
        colour = console.color_system is not None and not console.no_color  # NO_COLOR: shades
        console.print(text_picture(t, color=colour, width=console.width))
        return
    extra = ", ".join(f"{k}={v}" for k, v in p.params)
    render(t, f"{variant} at L={length}" + (f"\n{extra}" if extra else ""), out.parent, out.stem)
    say(Console(stderr=True), f"wrote {out} and {out.with_suffix('.svg')}")


def _one_length(seq: str) -> int:
    """One --seq length in the grammar of `run` (512, 4k, 1m)."""
    from attnbench.run.plan import parse_length

    if "," in seq or ".." in seq:
        raise UsageError(f"show-pattern draws one length: give one --seq (got '{seq}'), e.g. --seq 4k")
    n = parse_length(seq)
    if n > MAX_SEQ:
        raise UsageError(f"--seq {seq}: show-pattern draws at most {MAX_SEQ // 1024}k (the picture holds L×L "
                         f"values, {4 * n * n / 2**30:.0f} GiB at this length); accepted: up to {MAX_SEQ // 1024}k")
    return n


def _warn_if_dense(variant: str, seq: int, t, p) -> None:
    """A warning on stderr when the mask attends so much at this length that its pattern hides."""
    from attnbench.core.units import fmt_len
    from attnbench.report.gallery import SHOWS, is_mask, sparse_length

    dense = float(t.mean()) if is_mask(t) else 0.0
    if dense <= SHOWS:
        return
    block = dict(p.params).get("block")
    blocks = f", {-(-seq // block)} blocks of {block}" if isinstance(block, int) and block > 0 else ""
    found = sparse_length(variant, seq)
    hint = (f"; try --seq {fmt_len(found[0])} ({100 * found[1]:.1f} % attended)" if found
            else "; it stays dense up to L=8k")
    say(Console(stderr=True), f"{variant} at L={seq} attends {100 * dense:.1f} % of the pairs{blocks}: too short "
                              f"for its pattern to show{hint}", "warning:", "bold yellow")
