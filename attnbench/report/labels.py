"""Chart labels that say only what differs, and the subtitle that says what is shared.

A series is named "variant:backend", plus the KV-head count when the chart holds several, plus the
parameters whose values differ between series of the same variant within the chart. What every
series of the chart shares (device, dtype, B, H, D, causal, mode, a common KV-head count, each
variant's fixed parameters) goes to the subtitle and the footnote, once. The title therefore never
states an axis value that some series does not have (e.g. "H=8" over a chart holding Hkv=2 series
says "Hq=8", and the Hkv of each series is in its label).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from attnbench.report.analysis import Series


@dataclass(frozen=True)
class Labels:
    names: dict[int, str]  # id(series) -> label, unique within the chart
    shared: str  # "Hkv=2" etc.: axes every series has, for the subtitle ("" if none)
    fixed_params: str  # "performer: nb_features=256 …; linformer: k=256" ("" if none)


def _params(s: Series) -> dict:
    return {k: v for k, v in sorted(s.params().items())}


def chart_labels(group: list[Series]) -> Labels:
    """Labels of one chart's series (see the module docstring)."""
    kvs = {(s.axes["heads"], s.axes["kv_heads"]) for s in group}
    by_variant: dict[str, list[Series]] = {}
    for s in group:
        by_variant.setdefault(s.axes["variant"], []).append(s)
    varying: dict[str, set[str]] = {}
    fixed: dict[str, dict] = {}
    for v, ss in by_variant.items():
        keys = sorted({k for s in ss for k in _params(s)})
        varying[v] = {k for k in keys if len({repr(_params(s).get(k)) for s in ss}) > 1}
        fixed[v] = {k: _params(ss[0])[k] for k in keys if k not in varying[v] and k in _params(ss[0])}
    names: dict[int, str] = {}
    for s in group:
        label = s.name
        if len(kvs) > 1 and s.axes["kv_heads"] != s.axes["heads"]:
            label += f" Hkv={s.axes['kv_heads']}"
        p = _params(s)
        label += "".join(f" {k}={p[k]}" for k in sorted(varying[s.axes["variant"]]) if k in p)
        names[id(s)] = label
    _dedupe(group, names)
    (hq, hkv), = kvs if len(kvs) == 1 else ((None, None),)
    shared = f"Hkv={hkv}" if hkv is not None and hkv != hq else ""
    fixed_text = "; ".join(f"{v}: " + " ".join(f"{k}={val}" for k, val in p.items())
                           for v, p in sorted(fixed.items()) if p)
    return Labels(names, shared, fixed_text)


def _dedupe(group: list[Series], names: dict[int, str]) -> None:
    """Two series with one label (they differ in an axis not named, e.g. a cross with fixed Lk):
    number them, so the legend never shows one name twice."""
    seen: dict[str, int] = {}
    for s in group:
        n = names[id(s)]
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[id(s)] = f"{n} #{seen[n]}"


def wrap(text: str, width: int = 120) -> str:
    return "\n".join(textwrap.wrap(text, width)) if text else ""


def subtitle(scenario: dict, device_name: str | None, shared: str = "") -> str:
    """The fixed axes of a chart: device · dtype · B, Hq, D · causal · mode."""
    dev = device_name or scenario["device"]
    shape = f"B={scenario['batch']} Hq={scenario['heads']}" + (f" {shared}" if shared else "") \
        + f" D={scenario['head_dim']}"
    extra = " · causal" if scenario["causal"] else ""
    return f"{dev} · {scenario['dtype']} · {shape}{extra} · {scenario['mode']}"
