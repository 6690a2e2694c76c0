"""The pattern gallery: what each variant attends, from its registry `picture` (a 2-D (Lq, Lk) tensor).

A picture whose values are only 0 and 1 is a mask, drawn in two colours (attended / masked);
anything else is a bias or weight matrix, drawn with a colour map and a colour bar. The gallery
draws each variant at the first of 256, 1024, 4096 (squares, so vision variants fit) where a mask
leaves at least a quarter of the pairs out (a window of 256 covers all of L = 256). In the
terminal, a picture is drawn with Unicode blocks: half blocks in colour (two rows per line,
square pixels), or shades when the terminal has no colour; pictures longer than 64 are averaged down to 64
cells a side (a cell's
shade is then the fraction of its pairs attended), and the text says so.
"""

from __future__ import annotations

import textwrap

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import ListedColormap
from rich.text import Text

from attnbench.core.errors import UsageError
from attnbench.core.problem import Problem
from attnbench.report.model import Chart, Context
from attnbench.report.style import new_figure, save, styled
from attnbench.variants import registry

MASK_COLORS = ("#f2f2f2", "#1f4e8c")  # masked, attended
BIAS_CMAP = "viridis"
SHADES = " ░▒▓█"


def picture(variant: str, seq: int, params: dict | None = None) -> tuple[torch.Tensor, Problem]:
    """The variant's (Lq, Lk) picture at length `seq` (UsageError: unknown, no picture, unsupported)."""
    v = registry.get(variant)
    if v.picture is None:
        with_pic = [x.name for x in registry.all_variants() if x.picture is not None]
        raise UsageError(
            f"variant '{variant}' has no pattern picture; variants with one: {', '.join(with_pic) or 'none registered'}"
        )
    if seq < 1:
        raise UsageError(f"--seq must be at least 1 (got {seq})")
    raw = Problem(batch=1, heads=1, kv_heads=0, seq_q=seq, seq_k=0)
    p = v.resolve(raw.with_params(**{**v.defaults, **(params or {})}))
    reason = v.why_unsupported(p)
    if reason:
        raise UsageError(f"{variant} at L={seq}: {reason}")
    t = v.picture(p).detach().to("cpu").float()
    finite = torch.isfinite(t)
    if not finite.all() and bool((t[finite] == 0).all()):
        t = finite.float()  # an additive mask (0 / -inf) is a mask
    if t.dim() != 2 or 0 in t.shape:
        raise UsageError(f"{variant}.picture returned shape {tuple(t.shape)}; expected a non-empty (Lq, Lk)")
    return t, p


def is_mask(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


@styled
def render(t: torch.Tensor, heading: str, out_dir, stem: str):
    """Draw one picture; returns (png, svg)."""
    lq, lk = t.shape
    fig, axes = new_figure(4.6 * min(max(lk / lq, 0.6), 1.8) + (0.9 if not is_mask(t) else 0), 4.6)
    ax = axes[0][0]
    if is_mask(t):
        ax.imshow(
            t.numpy(),
            cmap=ListedColormap(MASK_COLORS),
            vmin=0,
            vmax=1,
            aspect="equal",
            interpolation="nearest" if lq <= 512 else "antialiased",
        )  # long: blend, thin lines stay
        density = float(t.mean())
        ax.set_xlabel(f"key j (dark: attended, {100 * density:.1f}% of pairs)")
    else:
        cmap = matplotlib.colormaps[BIAS_CMAP].with_extremes(bad=MASK_COLORS[0])  # -inf: masked
        im = ax.imshow(np.ma.masked_invalid(t.numpy()), cmap=cmap, interpolation="nearest", aspect="equal")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="bias / weight")
        ax.set_xlabel("key j" + (" (light grey: masked)" if not torch.isfinite(t).all() else ""))
    ax.set_ylabel("query i")
    ax.set_title(heading)
    ax.grid(False)
    return save(fig, out_dir, stem)


GALLERY_LENGTHS = (256, 1024, 4096)  # squares (16², 32², 64²), so vision variants fit


def _pick(name: str, params: dict | None):
    """(picture, problem) at the first gallery length where a mask leaves a quarter of pairs out."""
    best, why = None, ""
    for seq in GALLERY_LENGTHS:
        try:
            t, p = picture(name, seq, params)
        except UsageError as e:
            why = str(e)
            continue
        best = (t, p)
        if not is_mask(t) or float(t.mean()) < 0.75:
            break
    return best, why


def gallery(ctx: Context, variants: dict[str, dict]) -> tuple[list[Chart], list[str]]:
    """One picture per variant of the data that has one (params: those it ran with, else defaults)."""
    charts, notes = [], []
    for name, params in sorted(variants.items()):
        try:
            v = registry.get(name)
        except UsageError:
            continue
        if v.picture is None:
            continue
        picked, why = _pick(name, params)
        if picked is None:
            picked, why = _pick(name, None)
        if picked is None:
            notes.append(f"Pattern of {name} not drawn: {why}")
            continue
        t, p = picked
        extra = ", ".join(f"{k}={val}" for k, val in p.params)
        heading = f"{name} at L={p.seq_q}" + (
            f"\n{textwrap.fill(extra, 40)}" if extra else ""
        )  # within the picture's width
        png, svg = render(t, heading, ctx.out_dir, f"pattern-{name}")
        charts.append(Chart(f"{name}: {v.description}", png, svg))
    if not charts:
        notes.append(
            "Pattern gallery: no variant in the data has a pattern picture "
            "(try `attnbench show-pattern VARIANT --seq 256`)."
        )
    return charts, notes


def text_picture(t: torch.Tensor, color: bool, cells: int = 64, width: int | None = None) -> Text:
    """A Unicode rendering: colour half blocks (one column per cell), or two shade characters per
    cell without colour. At most `cells` cells a side, and no wider than `width` columns: a cell
    stands for a block of positions, its shade the mean over the block (for a mask the fraction
    attended, and at least the lightest shade where any pair of the block is attended)."""
    lq, lk = t.shape
    mask = is_mask(t)
    finite = torch.isfinite(t)
    masked = not mask and not bool(finite.all())
    if masked:  # masked entries of a bias (-inf): drawn as its minimum
        t = torch.where(finite, t, t[finite].min() if finite.any() else torch.tensor(0.0))
    cols = _fit(lk, min(cells, max(1, width // (1 if color else 2)) if width else cells))
    rows = cols if lq == lk else _fit(lq, min(cells, max(1, round(lq * cols / lk))))
    small = F.adaptive_avg_pool2d(t[None, None], (rows, cols))[0, 0]
    lo, hi = float(small.min()), float(small.max())
    norm = small.clamp(0, 1) if mask else (small - lo) / (hi - lo if hi > lo else 1.0)
    if mask and (rows, cols) != (lq, lk):  # a block with any attended pair never drawn blank
        anyp = F.adaptive_max_pool2d(t[None, None], (rows, cols))[0, 0] > 0
        norm = torch.where(anyp, norm.clamp(min=1 / (len(SHADES) - 1)), norm)
    out = Text()
    if color:
        rgb = _colors(norm, mask)
        for i in range(0, norm.shape[0], 2):
            for j in range(norm.shape[1]):
                bottom = rgb[i + 1][j] if i + 1 < norm.shape[0] else "#000000"
                out.append("▀", style=f"{rgb[i][j]} on {bottom}")
            out.append("\n")
    else:
        for i in range(norm.shape[0]):
            out.append(
                "".join(SHADES[min(int(float(x) * (len(SHADES) - 1) + 0.5), len(SHADES) - 1)] * 2 for x in norm[i])
                + "\n"
            )
    kind = "mask" if mask else "bias"
    scale = _scale(lq, lk, rows, cols, mask)
    out.append(f"{lq}×{lk} {kind}{scale}{'' if scale else '; '}{_legend(mask, masked, lo, hi)}")
    return out


def _fit(n: int, limit: int) -> int:
    """Cells along an axis of n positions, at most `limit`: the largest divisor of n in
    [limit/2, limit] (every cell then covers as many positions), else `limit`."""
    if n <= limit:
        return n
    return next((d for d in range(limit, limit // 2, -1) if n % d == 0), limit)


def _scale(lq: int, lk: int, rows: int, cols: int, mask: bool) -> str:
    """The caption's scale: how many positions one character cell stands for."""
    if (rows, cols) == (lq, lk):
        return ""
    a, b = (f"{x:.3g}" if x != int(x) else str(int(x)) for x in (lq / rows, lk / cols))
    how = "the fraction attended; a cell with any attended pair is never blank" if mask else "the mean"
    return f", averaged down to {rows}×{cols} cells of {a}×{b} positions (shade: {how})\n"


def _legend(mask: bool, masked: bool, lo: float, hi: float) -> str:
    if mask:
        return "dark/█: attended, light/blank: masked"
    return f"bias from {lo:.3g} (dark) to {hi:.3g} (bright)" + (
        ", masked (-inf) drawn as the minimum" if masked else "")


SHOWS = 0.75  # a mask attending more than this fraction of the pairs hides its pattern
SPARSE = 0.5  # the length suggested instead attends at most this fraction


def sparse_length(variant: str, seq: int, params: dict | None = None, limit: int = 8192) -> tuple[int, float] | None:
    """(L, fraction attended) at the first doubling of `seq` up to `limit` where the variant's mask
    attends at most SPARSE of the pairs (lengths it does not support are passed over); None if none."""
    n = 2 * seq
    while n <= limit:
        try:
            t, _ = picture(variant, n, params)
        except UsageError:
            n *= 2
            continue
        if float(t.mean()) <= SPARSE:
            return n, float(t.mean())
        n *= 2
    return None


def _colors(norm: torch.Tensor, mask: bool) -> list[list[str]]:
    cmap = ListedColormap(MASK_COLORS) if mask else matplotlib.colormaps[BIAS_CMAP]
    if mask:  # blend the two mask colours by the attended fraction of each cell
        a, b = (torch.tensor([int(c[k : k + 2], 16) for k in (1, 3, 5)], dtype=torch.float32) for c in MASK_COLORS)
        px = a + norm[..., None] * (b - a)
    else:
        px = torch.tensor(cmap(norm.numpy())[..., :3], dtype=torch.float32) * 255
    return [["#%02x%02x%02x" % tuple(int(c) for c in px[i, j]) for j in range(px.shape[1])] for i in range(px.shape[0])]
