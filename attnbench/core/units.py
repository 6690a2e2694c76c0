"""Units and number formatting shared by every layer (no torch, no rich)."""

from __future__ import annotations


def fmt_bytes(n: float | None, fmt: str = ".1f") -> str:
    """Bytes in binary units: 1.5 GiB, 3.2 MiB, ..."""
    if n is None:
        return "-"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            text = f"{n / div:{fmt}}"
            return f"{n / div:.0f} {unit}" if "e+" in text else f"{text} {unit}"  # .3g of 1000: not 1e+03
    return f"{n:.0f} B"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.3g}" if ms < 100 else f"{ms:,.0f}"


def short_kernel(kernel: str | None) -> str:
    """The dominant operator, without the aten:: prefix."""
    return (kernel or "").split(",")[0].replace("aten::", "").strip()


def fmt_len(n: int) -> str:
    """512, 1k, 1.5k, 1.25k: a length in units of 1024 where that is exact to two decimals, else whole (1000)."""
    return f"{n / 1024:g}k" if n >= 1024 and n % 256 == 0 else str(n)


def fmt_joules(j: float | None) -> str:
    """Energy with a unit: 1.23 J, 45.6 mJ, 7.8 µJ, 910 nJ; '-' for None."""
    if j is None:
        return "-"
    for unit, scale in (("J", 1.0), ("mJ", 1e-3), ("µJ", 1e-6)):
        if abs(j) >= scale:
            return f"{j / scale:.3g} {unit}"
    return f"{j / 1e-9:.3g} nJ"
