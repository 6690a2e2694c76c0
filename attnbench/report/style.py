"""Shared look of the report's charts: palette, markers, units, titles and atomic saving.

Colours are keyed on the series name ("variant:backend"): each name's preferred slot is a hash of
the name, and names present in one report take free slots in sorted order, so a series keeps its
colour across every chart of a report (and, collisions apart, across reports). matplotlib runs
with the Agg backend (no display needed).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from ..analysis import fmt_len  # noqa: E402

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#bcbd22", "#222222")  # tab10 with its grey (kept for guides) replaced by near-black
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
GUIDE = "#8a8a8a"
STATUS_MARKERS = {"oom": ("x", "OOM"), "timeout": ("v", "timeout"), "error": ("X", "error"), "killed": ("1", "killed"),
                  "skipped": ("|", "skipped (predicted too big/slow)")}
RC = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
      "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
      "grid.linestyle": "-", "axes.spines.top": False, "axes.spines.right": False,
      "svg.hashsalt": "attnbench", "figure.dpi": 110, "savefig.dpi": 110}


def _slot(name: str, n: int) -> int:
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % n


def _assign(names, n: int) -> dict[str, int]:
    """Each name takes its hashed slot, or the next free one (sorted order decides ties)."""
    taken: set[int] = set()
    out = {}
    for name in sorted(set(names)):
        s = _slot(name, n)
        while len(taken) < n and s in taken:
            s = (s + 1) % n
        taken.add(s)
        out[name] = s
    return out


def styled(fn):
    """Run a chart function under the report's rcParams (fonts, grid), leaving global ones alone."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


@dataclass
class Palette:
    """Colour per series name, marker per backend; stable for one report."""

    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._c = _assign(self.names, len(COLORS))
        backends = sorted({n.split(":")[-1].split(" ")[0] for n in self.names})
        self._m = {b: i % len(MARKERS) for i, b in enumerate(backends)}  # sorted order: o, s, ^, ...

    def color(self, name: str) -> str:
        return COLORS[self._c.get(name, _slot(name, len(COLORS)))]

    def marker(self, name: str) -> str:
        backend = name.split(":")[-1].split(" ")[0]
        return MARKERS[self._m.get(backend, _slot(backend, len(MARKERS)))]


def bytes_unit(peak: float) -> tuple[float, str]:
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if peak >= div:
            return div, unit
    return 1, "B"


def flops_unit(peak: float) -> tuple[float, str]:
    """TFLOP/s, or GFLOP/s when nothing reaches one TFLOP/s (CPU runs)."""
    return (1.0, "TFLOP/s") if peak >= 1 else (1e-3, "GFLOP/s")


def length_axis(ax, lengths) -> None:
    """A log2 x axis of sequence lengths with ticks at the measured lengths (256, 1k, ...)."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(int(x) for x in lengths))
    while len(ticks) > 10:
        ticks = ticks[::2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_len(x)))


def log_y(ax, which: str = "y") -> None:
    """A log axis labelled with plain numbers (40, 0.6, 1e-07), not 4×10¹; in-between ticks are
    labelled only when the axis spans about two decades or less."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    limits = getattr(ax, f"get_{which}lim")

    def minor(v: float, _pos) -> str:
        lo, hi = limits()
        lead = round(v / 10 ** math.floor(math.log10(v) + 1e-9)) if v > 0 else 0
        span = hi / max(lo, 1e-300)
        return f"{v:g}" if (span < 15 and lead in (2, 3, 4, 6)) or (span < 150 and lead in (2, 5)) else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def title(what: str, scenario: dict, device_name: str | None) -> str:
    dev = device_name or scenario["device"]
    shape = f"B={scenario['batch']} H={scenario['heads']} D={scenario['head_dim']}"
    extra = ", causal" if scenario["causal"] else ""
    return f"{what}\n{dev} · {scenario['dtype']} · {shape}{extra} · {scenario['mode']}"


def new_figure(width: float = 8.0, height: float = 4.8, ncols: int = 1, nrows: int = 1):
    """A figure with constrained layout (titles and labels never overlap); axes as a 2-D array."""
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained")


def save(fig, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write stem.png and stem.svg under out_dir atomically; close the figure."""
    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        meta = {"Software": "attnbench"} if ext == "png" else {"Date": None}
        fig.savefig(buf, format=ext, bbox_inches="tight", metadata=meta)
        path = out_dir / f"{stem}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths[0], paths[1]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Like results.atomic_write_text for bytes: temporary file beside `path`, fsync, rename;
    a failed write removes the temporary and raises OutputError."""
    from ..results import atomic_write_bytes as write

    write(path, data)
