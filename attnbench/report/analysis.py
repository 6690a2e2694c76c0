"""Scaling analysis of results: fitted exponents, crossovers, frontiers, speedups.

A *series* is one variant/backend at fixed other axes (device, mode, dtype, B, Hq, Hkv, D, causal,
params) over the swept length L (seq_q; seq_k, the KV-cache length, in decode mode).

- Exponent: the fit of report/verdicts.py (y = a + c·L^k with a fixed offset from 5 lengths,
  else c·L^k; y = median latency or peak memory) with a 95 % Student-t interval, next to the
  exponent the (variant, backend) pair's complexity claim implies ("O(L²)" → 2, "O(L·w)" → 1,
  "O(L·√L)" → 1.5, "O(L log L)" → 1 plus the local slope of log L over the measured range).
  Verdict: agrees | differs | inconclusive | too few lengths (report/verdicts.py).
- Crossover: the L where curve A passes curve B, interpolated linearly in log-log space.
- Frontier: the longest L that ran, and the status and reason of the next one that did not.

Honest limits: a power law is a model; at small L fixed overheads (launches, allocation, Python)
flatten the curves, so a fit over short lengths undershoots the asymptotic exponent. The slope
over the two longest lengths (`tail`) is reported next to the fit to show it. Noise on a shared
CPU widens the interval; two points give an exponent and no interval. In decode mode (one query)
the claim for a full forward is lowered by one power of L for time, and memory is not judged.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

SERIES_KEYS = ("variant", "backend", "device", "mode", "dtype", "batch", "heads", "kv_heads",
               "head_dim", "causal", "params")
SCENARIO_KEYS = ("device", "mode", "dtype", "batch", "heads", "head_dim", "causal")
FAILURES = ("oom", "timeout", "error", "killed", "wrong")  # tried and did not finish (wrong: refused before timing)
FAILED = (*FAILURES, "skipped")  # statuses that end a frontier (a skip: the budget said it would not fit)

from attnbench.report.verdicts import VERDICTS, Fit, fit_scaling, judge, t975  # noqa: E402, F401  (re-exported)


# ---------------------------------------------------------------- complexity claims
@dataclass(frozen=True)
class Claim:
    """The growth in L a complexity string implies: L**power · (log L)**log_power."""

    text: str
    power: float
    log_power: int = 0

    def band(self, l_min: float, l_max: float) -> tuple[float, float]:
        """Exponents a fit over [l_min, l_max] may show: (log L)^k adds its secant slope there."""
        if not self.log_power or l_max <= l_min or l_min <= 1:
            return self.power, self.power
        extra = self.log_power * (math.log(math.log(l_max)) - math.log(math.log(l_min))) \
            / (math.log(l_max) - math.log(l_min))
        return self.power, self.power + extra

    def short(self) -> str:
        return f"{self.power:g}" + (f" (+log{'' if self.log_power == 1 else self.log_power})" if self.log_power else "")


_SUPER = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_LOG = re.compile(r"log\s*₂?\s*(\(\s*L[qk]?\s*\)|L[qk]?)(?![A-Za-z_])")
_SQRT = re.compile(r"(√|sqrt)\s*(\(\s*L[qk]?\s*\)|L[qk]?)(?![A-Za-z_])")
_POW = re.compile(r"L[qk]?(?![A-Za-z_])\s*(?:\^\s*\(?\s*([0-9.]+)\s*\)?|([0-9]+))?")


def parse_claim(text: str | None) -> Claim | None:
    """'O(L²)' -> 2; 'O(L·w)' -> 1; 'O(L·√L)' -> 1.5; 'O(L log L)' -> 1 + log. Symbols other than
    L (Lq, Lk) are constants; of a sum the fastest-growing term wins. None: no claim in L."""
    if not text:
        return None
    m = re.fullmatch(r"\s*O\((.*)\)\s*", text.strip())
    if not m:
        return None
    body = m.group(1).translate(_SUPER)
    best: tuple[float, int] | None = None
    for term in _top_level_terms(body):
        num, _, den = term.partition("/")
        p_num, k_num = _term_power(num)
        p_den, k_den = _term_power(den)
        cand = (p_num - p_den, k_num - k_den)
        best = cand if best is None or cand > best else best
    return Claim(text, float(best[0]), best[1]) if best else None


def _top_level_terms(body: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in body:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "+" and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    return [t for t in terms + [cur] if t.strip()]


def _term_power(term: str) -> tuple[float, int]:
    logs = len(_LOG.findall(term))
    term = _LOG.sub(" ", term)
    power = 0.5 * len(_SQRT.findall(term))
    term = _SQRT.sub(" ", term)
    for m in _POW.finditer(term):
        power += float(m.group(1) or m.group(2) or 1)
    return power, logs


# ---------------------------------------------------------------- fits
def fit_exponent(lengths, values) -> Fit | None:
    """Fit log(values) = a + b·log(lengths); None with fewer than two positive points."""
    L = np.asarray(lengths, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(L) & np.isfinite(y) & (L > 0) & (y > 0)
    L, y = L[keep], y[keep]
    order = np.argsort(L)
    L, y = L[order], y[order]
    if len(np.unique(L)) < 2:
        return None
    x, z = np.log(L), np.log(y)
    sxx = float(np.sum((x - x.mean()) ** 2))
    slope = float(np.sum((x - x.mean()) * (z - z.mean())) / sxx)
    n = len(x)
    if n >= 3:
        resid = z - (z.mean() + slope * (x - x.mean()))
        se = math.sqrt(float(np.sum(resid ** 2)) / (n - 2) / sxx)
        half = t975(n - 2) * se
        lo, hi = slope - half, slope + half
    else:
        lo = hi = float("nan")
    tail = float((z[-1] - z[-2]) / (x[-1] - x[-2])) if x[-1] > x[-2] else None
    return Fit(slope, lo, hi, n, int(L[0]), int(L[-1]), tail, tuple(int(v) for v in L), df=max(n - 2, 0))


def verdict(fit: Fit | None, claim: Claim | None) -> tuple[str, str]:
    """(verdict, note): agrees | differs | inconclusive | too few lengths (see report/verdicts.py),
    or 'no fit' / 'no claim'."""
    return judge(fit, claim)


def decode_claim(claim: Claim | None) -> Claim | None:
    """A decode step runs one query row of the full forward: one power of L less (floor 0)."""
    if claim is None:
        return None
    return Claim(f"{claim.text} per forward → L^{max(claim.power - 1, 0):g} per step",
                 max(claim.power - 1, 0.0), claim.log_power)


def big_o(claim: Claim) -> str:
    """The growth of a claim in L as O(...): O(1), O(L), O(L·√L), O(L²), O(L log L)."""
    p = claim.power
    core = {0.0: "1", 0.5: "√L", 1.0: "L", 1.5: "L·√L", 2.0: "L²", 3.0: "L³"}.get(p, f"L^{p:g}")
    if claim.log_power:
        log = "log L" if claim.log_power == 1 else f"log^{claim.log_power} L"
        core = log if core == "1" else f"{core} {log}"
    return f"O({core})"


# ---------------------------------------------------------------- crossovers
def crossover(la, ya, lb, yb, a: str = "A", b: str = "B", better: str = "faster") -> dict:
    """Where A and B swap order, interpolated in log-log over their common range of L.

    Returns {"points": [(L, winner after L), ...], "text": summary}."""
    la, ya, lb, yb = (np.asarray(v, dtype=float) for v in (la, ya, lb, yb))
    lo, hi = max(la.min(), lb.min()), min(la.max(), lb.max())
    grid = np.unique(np.concatenate([la, lb]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if len(grid) < 2:
        return {"points": [], "text": "no common range"}
    x = np.log(grid)
    d = np.interp(x, np.log(la), np.log(ya)) - np.interp(x, np.log(lb), np.log(yb))  # >0: A worse
    points = []
    for i in range(len(x) - 1):
        if d[i] * d[i + 1] < 0 or (d[i] == 0 and i > 0 and d[i - 1] * d[i + 1] < 0):
            t = d[i] / (d[i] - d[i + 1]) if d[i] != d[i + 1] else 0.0
            points.append((float(math.exp(x[i] + t * (x[i + 1] - x[i]))), a if d[i + 1] < 0 else b))
    span = f"{fmt_len(lo)}–{fmt_len(hi)}"
    if not points:
        who = a if np.mean(d) < 0 else b
        return {"points": [], "text": f"none in {span} ({who} {better} throughout)"}
    text = "; ".join(f"{w} {better} from L≈{fmt_len(L)}" for L, w in points)
    return {"points": points, "text": text}


def fmt_len(n: float) -> str:
    n = float(n)
    if n >= 1024 and abs(n / 1024 - round(n / 1024)) < 1e-9:
        return f"{round(n / 1024)}k"
    if n >= 1024:
        return f"{n / 1024:.1f}k"
    return f"{n:.0f}"


# ---------------------------------------------------------------- series
@dataclass(frozen=True)
class Series:
    """One variant/backend at fixed other axes; records sorted by L (every status)."""

    key: tuple
    records: tuple[dict, ...]

    @property
    def name(self) -> str:
        return f"{self.records[0]['variant']}:{self.records[0]['backend']}"

    @property
    def axes(self) -> dict[str, Any]:
        return dict(zip(SERIES_KEYS, self.key))

    def params(self) -> dict[str, Any]:
        p = self.axes["params"]
        return json.loads(p) if isinstance(p, str) else dict(p or {})

    def scenario(self) -> tuple:
        return tuple(self.axes[k] for k in SCENARIO_KEYS)

    def ok(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "ok"]

    def xy(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        """(L, value) of ok records with a positive value; field is 'latency' or a record key."""
        pts = [(length(r), _value(r, field)) for r in self.ok()]
        pts = [(L, v) for L, v in pts if v is not None and v > 0]
        return np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)


def length(r: dict) -> int:
    """The swept length of a record: the KV-cache length in decode mode, else the query length."""
    return int(r["seq_k"] if r["mode"] == "decode" else r["seq_q"])


def _value(r: dict, field: str) -> float | None:
    if field == "latency":
        return (r.get("latency_ms") or {}).get("median")
    return r.get(field)


def series(records: list[dict]) -> list[Series]:
    """Group records into series (pandas groupby on the fixed axes); duplicates keep the last."""
    import pandas as pd

    if not records:
        return []
    rows = [{**{k: r.get(k) for k in SERIES_KEYS}, "params": json.dumps(r.get("params") or {}, sort_keys=True),
             "L": length(r), "seq_k": r["seq_k"], "i": i} for i, r in enumerate(records)]
    df = pd.DataFrame(rows).drop_duplicates(subset=[*SERIES_KEYS, "L", "seq_k"], keep="last")
    out = []
    for key, g in df.groupby(list(SERIES_KEYS), sort=True, dropna=False):
        sub = [g] if g["L"].is_unique else [s for _, s in g.groupby("seq_k")]  # cross with fixed Lk
        for s in sub:
            recs = tuple(records[i] for i in s.sort_values("L")["i"])
            out.append(Series(tuple(k.item() if hasattr(k, "item") else k for k in key), recs))  # numpy -> python
    return out


def frontier(s: Series) -> dict[str, Any]:
    """The longest L that ran, the first longer one that did not (status, reason), and every
    length where the case was tried and failed, shorter ones included: a crash at 2k between
    lengths that ran is a failure, not a frontier beyond 8k."""
    ok = [length(r) for r in s.ok()]
    largest = max(ok) if ok else None
    after = [r for r in s.records if r["status"] in FAILED and (largest is None or length(r) > largest)]
    nxt = after[0] if after else None
    failed = [r for r in s.records if r["status"] in FAILURES]
    text = f"ok to {fmt_len(largest)}" if largest else "nothing ran"
    inside = [r for r in failed if r is not nxt]
    if inside:
        text += "; failed at " + ", ".join(f"{fmt_len(length(r))} ({r['status']})" for r in inside)
    if nxt:
        text += f"; {nxt['status']} at {fmt_len(length(nxt))}"
    elif largest and not failed:
        text += ", none failed"
    return {"largest_ok": largest, "next_status": nxt and nxt["status"],
            "next_L": nxt and length(nxt), "next_reason": nxt and nxt.get("reason"), "text": text,
            "failed": [(length(r), r["status"], first_line(r.get("reason"))) for r in failed]}


def first_line(reason: str | None) -> str:
    """The first non-empty line of a failure's reason, whole (views wrap it, never cut it)."""
    return next((ln.strip() for ln in (reason or "").splitlines() if ln.strip()), "no reason recorded")


# ---------------------------------------------------------------- tables
def parse_baseline(text: str) -> str:
    """'VARIANT:BACKEND' checked for shape (presence in the data is checked by the caller)."""
    from attnbench.core.errors import UsageError

    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise UsageError(f"bad baseline '{text}'; accepted: VARIANT:BACKEND, e.g. mha:eager")
    return ":".join(p.strip() for p in parts)


def baseline_of(s: Series, everything: list[Series], baseline: str) -> Series | None:
    """The baseline series at s's scenario: same kv_heads and params if present, else the only one."""
    same = [b for b in everything if b.name == baseline and b.scenario() == s.scenario() and b.ok()]
    exact = [b for b in same if (b.axes["kv_heads"], b.axes["params"]) == (s.axes["kv_heads"], s.axes["params"])]
    if exact:
        return exact[0]
    return same[0] if len(same) == 1 else None


def ratio_at(s: Series, base: Series, field: str) -> tuple[float | None, int | None]:
    """base/s of `field` at the longest length both measured (a speedup or a memory saving)."""
    mine = dict(zip(*s.xy(field)))
    theirs = dict(zip(*base.xy(field)))
    common = sorted(set(mine) & set(theirs))
    if not common:
        return None, None
    L = common[-1]
    return float(theirs[L] / mine[L]), int(L)


def _claims(s: "Series") -> tuple[str, str]:
    """The (time, memory) claims of a series' (variant, backend) pair: the backend's own where it
    declares one (a fused kernel's O(L) memory), else the variant's, from the results file's
    catalogue (report/catalogue.py); "?" for a variant no catalogue describes."""
    return tuple(s.records[0].get("_claims") or ("?", "?"))


def shape_text(axes: dict) -> str:
    """The fixed axes of a series in one line: mode dtype B H[/Hkv] D [causal] device."""
    kv = f"/{axes['kv_heads']}" if axes.get("kv_heads") not in (None, axes["heads"]) else ""
    return (f"{axes['mode']} {axes['dtype']} B{axes['batch']} H{axes['heads']}{kv} D{axes['head_dim']}"
            + (" causal" if axes["causal"] else "") + f" {axes['device']}")


def _fit_fields(prefix: str, fit: Fit | None, verdict_note: tuple[str, str]) -> dict:
    v, note = verdict_note
    return {f"{prefix}_exp": fit.exponent if fit else None,
            f"{prefix}_ci_low": _finite(fit.ci_low) if fit else None,
            f"{prefix}_ci_high": _finite(fit.ci_high) if fit else None,
            f"{prefix}_lengths": list(fit.lengths) if fit else [], f"{prefix}_model": fit.model if fit else None,
            f"{prefix}_fit": fit.text() if fit else "-", f"{prefix}_verdict": v, f"{prefix}_note": note}


def scaling_row(s: Series, everything: list[Series], baseline: str) -> dict:
    """One row of the scaling table: claims of the (variant, backend) pair, fits of the regime the
    claims are about with 95 % intervals and three-outcome verdicts, crossover, frontier, speed."""
    time_text, mem_text = _claims(s)
    decode = s.axes["mode"] == "decode"
    t_claim = decode_claim(parse_claim(time_text)) if decode else parse_claim(time_text)
    m_claim = None if decode else parse_claim(mem_text)
    t_fit, m_fit = fit_scaling(*s.xy("latency")), fit_scaling(*s.xy("peak_mem_bytes"))
    base = baseline_of(s, everything, baseline)
    cross = "-" if base is None or base is s else \
        crossover(*s.xy("latency"), *base.xy("latency"), s.name, baseline)["text"]
    speedup, at = ratio_at(s, base, "latency") if base is not None else (None, None)
    saving, _ = ratio_at(s, base, "peak_mem_bytes") if base is not None else (None, None)
    last = s.ok()[-1] if s.ok() else {}
    fr = frontier(s)
    if decode and t_claim is not None:
        time_text = f"{big_o(t_claim)} per token (a full forward: {time_text})"
    return {
        **{k: s.axes[k] for k in SERIES_KEYS}, "params": s.params(), "series": s.name, "shape": shape_text(s.axes),
        "time_claim": time_text, "memory_claim": mem_text,
        "time_expected": t_claim.short() if t_claim else "-", "memory_expected": m_claim.short() if m_claim else "-",
        "n_time": t_fit.n if t_fit else 0, "l_min": t_fit.l_min if t_fit else None,
        "l_max": t_fit.l_max if t_fit else None, "time_tail": t_fit.tail if t_fit else None,
        **_fit_fields("time", t_fit, verdict(t_fit, t_claim)), "n_mem": m_fit.n if m_fit else 0,
        **_fit_fields("mem", m_fit, verdict(m_fit, m_claim) if not decode else ("n/a in decode", "")),
        "baseline": baseline if base is not None else None, "is_baseline": base is s,
        "crossover_vs_baseline": cross,
        "speedup": speedup, "mem_saving": saving, "compared_at": at,
        "largest_ok": fr["largest_ok"], "next_status": fr["next_status"], "next_L": fr["next_L"],
        "next_reason": fr["next_reason"], "frontier": fr["text"], "failed": fr["failed"],
        "tflops": last.get("tflops"), "gbps": last.get("gbps"), "roofline_frac": last.get("roofline_frac"),
    }


def json_rows(rows: list[dict]) -> list[dict]:
    """The machine-readable verdicts (`attnbench show --json`): one row per (series, metric) with
    series, shape, metric, exponent, ci_low, ci_high, lengths, claim, verdict (and note)."""
    out = []
    for r in rows:
        name = r.get("name", r["series"]) + "".join(f" {k}={v}" for k, v in sorted(r["params"].items()))
        for metric, pre, claim in (("latency", "time", "time_claim"), ("memory", "mem", "memory_claim")):
            out.append({"series": name, "shape": r["shape"], "metric": metric, "exponent": r[f"{pre}_exp"],
                        "ci_low": r[f"{pre}_ci_low"], "ci_high": r[f"{pre}_ci_high"], "lengths": r[f"{pre}_lengths"],
                        "claim": r[claim], "verdict": r[f"{pre}_verdict"], "note": r[f"{pre}_note"],
                        "model": r[f"{pre}_model"]})
    return out


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def scaling_table(records: list[dict], baseline: str = "mha:eager") -> list[dict]:
    """One row per series with at least one ok record (see scaling_row); `series` is the label
    that tells it from the others of its scenario (labels_of), `name` the bare variant:backend."""
    everything = series(records)
    names = labels_of(everything)
    return [{**scaling_row(s, everything, baseline), "series": names[id(s)], "name": s.name}
            for s in everything if s.ok()]


def labels_of(everything: list[Series]) -> dict[int, str]:
    """id(series) -> "variant:backend", plus Hkv where a scenario holds several KV-head counts and
    the parameters whose values differ between series of that variant in the scenario (two
    performer:chunked series at eps=0 and eps=1e-4 read "performer:chunked eps=0.0" and "… eps=0.0001")."""
    out: dict[int, str] = {}
    groups: dict[tuple, list[Series]] = {}
    for s in everything:
        groups.setdefault(s.scenario(), []).append(s)
    for group in groups.values():
        kvs = {s.axes["kv_heads"] for s in group}
        for s in group:
            same = [o.params() for o in group if o.axes["variant"] == s.axes["variant"]]
            p = s.params()
            differ = [k for k in sorted(p) if len({repr(q.get(k)) for q in same}) > 1]
            kv = f" Hkv={s.axes['kv_heads']}" if len(kvs) > 1 and s.axes["kv_heads"] != s.axes["heads"] else ""
            out[id(s)] = s.name + kv + "".join(f" {k}={p[k]}" for k in differ)
    return out
