"""Why a backend is unavailable here, in `attnbench list`: short, on one line, each reason once.

A reason given by one backend only and short enough is written next to its ✗; a reason shared
by several backends (Triton's "no CUDA device ...") or too long gets a marker (¹, ², ...)
and is written once below the table, with the backends it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass

INLINE = 32  # the longest reason written next to its ✗
_SUP = "⁰¹²³⁴⁵⁶⁷⁸⁹"


@dataclass(frozen=True)
class Reasons:
    """`inline`: (variant, backend) -> the text after ✗; `notes`: the lines below the table."""

    inline: dict[tuple[str, str], str]
    notes: tuple[str, ...]


def short(backend: str, reason: str) -> str:
    """One line, without the backend's own name in front ('sdpa-cudnn exists only on CUDA
    devices' -> 'exists only on CUDA devices': the same reason as sdpa-efficient's)."""
    text = " ".join(reason.split())
    return text[len(backend) + 1:] if text.startswith(backend + " ") else text


def marker(n: int) -> str:
    return "".join(_SUP[int(c)] for c in str(n))


def unavailable_reasons(rows: list[dict]) -> Reasons:
    """The reasons of the unavailable backends of `list_rows` rows, deduplicated."""
    by_reason: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        for b in r["backends"]:
            if not b["available"]:
                by_reason.setdefault(short(b["name"], b["reason"] or "unavailable"), []).append((r["name"], b["name"]))
    inline, notes = {}, []
    for reason, where in by_reason.items():
        if len(where) == 1 and len(reason) <= INLINE:
            inline[where[0]] = f" ({reason})"
            continue
        mark = marker(len(notes) + 1)
        for key in where:
            inline[key] = mark
        backends = ", ".join(dict.fromkeys(b for _, b in where))
        notes.append(f"✗{mark} {backends}: {reason}")
    return Reasons(inline, tuple(notes))
