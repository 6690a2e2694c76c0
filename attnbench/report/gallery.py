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
    reason = v.supports(p)
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


def text_picture(t: torch.Tensor, color: bool, cells: int = 64) -> Text:
    """A Unicode rendering: colour half blocks, or shade characters without colour."""
    lq, lk = t.shape
    mask = is_mask(t)
    finite = torch.isfinite(t)
    masked = not mask and not bool(finite.all())
    if masked:  # masked entries of a bias (-inf): drawn as its minimum
        t = torch.where(finite, t, t[finite].min() if finite.any() else torch.tensor(0.0))
    small = F.adaptive_avg_pool2d(t[None, None], (min(lq, cells), min(lk, cells)))[0, 0]
    lo, hi = float(small.min()), float(small.max())
    norm = small.clamp(0, 1) if mask else (small - lo) / (hi - lo if hi > lo else 1.0)
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
    scaled = f", averaged down to {norm.shape[0]}×{norm.shape[1]} cells" if (lq, lk) != tuple(norm.shape) else ""
    legend = (
        "dark/█: attended, light/blank: masked"
        if mask
        else f"bias from {lo:.3g} (dark) to {hi:.3g} (bright)"
        + (", masked (-inf) drawn as the minimum" if masked else "")
    )
    out.append(f"{lq}×{lk} {'mask' if mask else 'bias'}{scaled}; {legend}")
    return out


def _colors(norm: torch.Tensor, mask: bool) -> list[list[str]]:
    cmap = ListedColormap(MASK_COLORS) if mask else matplotlib.colormaps[BIAS_CMAP]
    if mask:  # blend the two mask colours by the attended fraction of each cell
        a, b = (torch.tensor([int(c[k : k + 2], 16) for k in (1, 3, 5)], dtype=torch.float32) for c in MASK_COLORS)
        px = a + norm[..., None] * (b - a)
    else:
        px = torch.tensor(cmap(norm.numpy())[..., :3], dtype=torch.float32) * 255
    return [["#%02x%02x%02x" % tuple(int(c) for c in px[i, j]) for j in range(px.shape[1])] for i in range(px.shape[0])]
