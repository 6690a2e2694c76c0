"""Shared look of the report's charts: palette, markers, units, titles and atomic saving.

Colour is keyed on the variant and (marker, line style) on the backend, each in sorted order over
the report, so a series looks the same in every chart of a report; within one chart no two series
share (colour, marker, line style). Every line has the same width except the baseline. matplotlib runs
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

from attnbench.report.analysis import fmt_len  # noqa: E402

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#bcbd22", "#222222", "#6b3fa0", "#7a8a00")  # 12 qualitative colours; grey is kept for guides
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h")  # 11 markers × 4 line styles: 44 pairs
LINESTYLES = ("-", "--", ":", "-.")
LINE_WIDTH, BASELINE_WIDTH = 1.6, 3.0  # every line alike; the baseline is the one drawn thicker
GUIDE = "#8a8a8a"
STATUS_MARKERS = {"oom": ("x", "OOM"), "timeout": ("v", "timeout"), "error": ("X", "error"), "killed": ("1", "killed"),
                  "skipped": ("|", "skipped (predicted too big/slow)"), "wrong": ("P", "wrong (refused before timing)")}
RC = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
      "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
      "grid.linestyle": "-", "axes.spines.top": False, "axes.spines.right": False,
      "svg.hashsalt": "attnbench", "figure.dpi": 110, "savefig.dpi": 110, "svg.fonttype": "none"}


def styled(fn):
    """Run a chart function under the report's rcParams (fonts, grid), leaving global ones alone."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Look:
    """How one series is drawn: colour (its variant), marker and line style (its backend)."""

    color: str
    marker: str
    ls: str


def _variant(name: str) -> str:
    return name.split(":")[0]


def _backend(name: str) -> str:
    return name.split(":")[-1].split(" ")[0]


@dataclass
class Palette:
    """Colour per variant, (marker, line style) per backend, both in sorted order over the report,
    so a variant keeps its colour and a backend its marker in every chart of a report. `looks`
    resolves clashes within one chart (same variant and backend with other parameters, or more than
    12 variants): no two series of a chart share (colour, marker, line style) up to 12 × 44 series, and
    series of one colour get different markers while there are markers left (a single point has no
    line, so its marker must tell it apart)."""

    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._c = {v: i % len(COLORS) for i, v in enumerate(sorted({_variant(n) for n in self.names}))}
        self._s = {b: i for i, b in enumerate(sorted({_backend(n) for n in self.names}))}

    def _color_slot(self, name: str) -> int:
        v = _variant(name)
        return self._c.get(v, int(hashlib.sha1(v.encode()).hexdigest(), 16) % len(COLORS))

    def _style_slot(self, name: str) -> int:
        b = _backend(name)
        return self._s.get(b, int(hashlib.sha1(b.encode()).hexdigest(), 16) % (len(MARKERS) * len(LINESTYLES)))

    @staticmethod
    def _style(slot: int) -> tuple[str, str]:
        slot %= len(MARKERS) * len(LINESTYLES)  # 11 and 4 are coprime: slots 0..43 are 44 distinct pairs
        return MARKERS[slot % len(MARKERS)], LINESTYLES[slot % len(LINESTYLES)]

    def color(self, name: str) -> str:
        return COLORS[self._color_slot(name)]

    def marker(self, name: str) -> str:
        return self._style(self._style_slot(name))[0]

    def look(self, name: str) -> Look:
        return Look(self.color(name), *self._style(self._style_slot(name)))

    def looks(self, names: list[str]) -> dict[str, Look]:
        """Looks of one chart's series (names unique), each (colour, marker, style) used once."""
        taken: set[tuple] = set()
        out = {}
        n_styles = len(MARKERS) * len(LINESTYLES)
        for name in names:
            c0, s0 = self._color_slot(name), self._style_slot(name)
            candidates = [((c0 + k // n_styles) % len(COLORS), *self._style(s0 + k % n_styles))
                          for k in range(len(COLORS) * n_styles)]  # this colour's styles first, then others
            key = next((c for c in candidates if c not in taken and (c[0], c[1]) not in taken),
                       next(c for c in candidates if c not in taken))
            taken |= {key, key[:2]}
            out[name] = Look(COLORS[key[0]], key[1], key[2])
        return out


def bytes_unit(peak: float) -> tuple[float, str]:
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if peak >= div:
            return div, unit
    return 1, "B"


def flops_unit(peak: float) -> tuple[float, str]:
    """Always TFLOP/s: the one throughput unit of the terminal tables, the CSV (`tflops`) and the charts."""
    return 1.0, FLOPS_UNIT


FLOPS_UNIT = "TFLOP/s"


def time_unit(lo_ms: float, hi_ms: float) -> tuple[float, str]:
    """(divisor of milliseconds, unit) for values from lo_ms to hi_ms: µs, ms or s, whichever puts
    the geometric middle of the range between 1 and 1000."""
    mid = math.sqrt(max(lo_ms, 1e-12) * max(hi_ms, 1e-12))
    if mid < 1.0:
        return 1e-3, "µs"
    if mid >= 1000.0:
        return 1e3, "s"
    return 1.0, "ms"


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
    shape = f"B={scenario['batch']} Hq={scenario['heads']} D={scenario['head_dim']}"
    extra = ", causal" if scenario["causal"] else ""
    return f"{what}\n{dev} · {scenario['dtype']} · {shape}{extra} · {scenario['mode']}"


def new_figure(width: float = 8.0, height: float = 4.8, ncols: int = 1, nrows: int = 1, **kwargs):
    """A figure with constrained layout (titles and labels never overlap); axes as a 2-D array."""
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained", **kwargs)


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
    from attnbench.core.results import atomic_write_bytes as write

    write(path, data)
