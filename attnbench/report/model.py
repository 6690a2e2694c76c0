"""The report as data: sections of charts and tables, rendered by markdown.py and html.py.

`Context` carries what every chart needs from the results headers: the device's name and the
in-run GEMM reference (the roofline) per device type and dtype. With several results files of the
same device type, the first header that has the value wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.report.style import Palette


@dataclass(frozen=True)
class Chart:
    caption: str
    png: Path
    svg: Path
    how: str = ""  # one line above the chart: how to read it


@dataclass(frozen=True)
class Table:
    """Rows to show; columns are (row key, header); csv: where the full rows were written."""

    title: str
    columns: tuple[tuple[str, str], ...]
    rows: tuple[dict[str, Any], ...]
    csv: Path | None = None
    note: str = ""


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # charts not drawn, and why
    lead: bool = False  # the opening section: before the contents, its charts side by side


@dataclass(frozen=True)
class Context:
    headers: tuple[dict, ...]
    out_dir: Path
    palette: Palette
    baseline: str

    def env(self, device: str) -> dict:
        for h in self.headers:
            if (h.get("env") or {}).get("device") == device:
                return h["env"]
        return {}

    def device_name(self, device: str) -> str:
        return self.env(device).get("device_name") or device

    def gemm_flops(self, device: str, dtype: str) -> tuple[float, int] | None:
        """(FLOP/s, n) of the in-run n×n GEMM reference for this device type and dtype."""
        for h in self.headers:
            if (h.get("env") or {}).get("device") != device:
                continue
            ref = ((h.get("refs") or {}).get("gemm") or {}).get(dtype)
            if ref and ref.get("flops_per_s"):
                return float(ref["flops_per_s"]), int(ref.get("n") or 0)
        return None
