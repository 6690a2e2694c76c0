"""Scaling verdicts with three outcomes, on a fit of the regime a complexity claim is about.

The fit (`fit_scaling`): with 5 or more lengths, y = a + c·L^k by least squares in log space
(a ≥ 0: a fixed offset — launches, allocator pages, a kernel's thread buffers — that flattens
short lengths; the exponent k is then the growth the claim is about), unless the offset is under
5 % of the value at the shortest length, where the plain power law y = c·L^k (one parameter
fewer) is used; with 4 lengths only the power law. The note says which model, and the offset's
share. Not a significance test between the two: on SDPA's CPU memory (a + c·L, a ≈ 1 MiB of
thread tile buffers, ±1 % scatter) an F-test or AICc kept the biased power law often enough to
say "differs" about a backend that is O(L); the offset model, with enough lengths, agreed. The
95 % interval of k is Student's t (scipy) times the standard error from the fit's covariance,
with n − 3 (offset) or n − 2 degrees of freedom. Shortest lengths may be dropped (see
fit_scaling: the widest regime whose fit is adequate, never fewer than 5 lengths when 5 or more
were measured); `lengths` lists those used.

The verdict (`judge`), against the standard classes O(1), O(L), O(L·√L), O(L²), O(L³):
- ``too few lengths``: fewer than 4 distinct lengths; no exponent verdict at all.
- ``differs``: the interval, widened by MODEL_TOL for lower-order terms at finite L, excludes the
  claim (the note says flatter or steeper).
- ``agrees``: the widened interval contains the claim, the interval itself (not widened) excludes
  every other class, and it is at most MAX_WIDTH wide.
- ``inconclusive``: otherwise; the note names the classes the interval covers and the cause of
  its width (few lengths, a constant offset, noise).

Honest limits: the models are models; a curve with two growing terms (L·D + L²) fits a + c·L^k
with k a little under the larger power, which MODEL_TOL absorbs. On a shared machine latency
scatter often leaves latency verdicts inconclusive: that is the right answer then.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

CLASSES = ((0.0, "O(1)"), (1.0, "O(L)"), (1.5, "O(L·√L)"), (2.0, "O(L²)"), (3.0, "O(L³)"))
VERDICTS = ("agrees", "differs", "inconclusive", "too few lengths")
MIN_LENGTHS = 4  # fewer: "too few lengths"
OFFSET_MIN_LENGTHS = 5  # the offset model needs two degrees of freedom left
OFFSET_MIN_SHARE = 0.05  # a smaller offset (share of y at the shortest length) is not modelled
MODEL_TOL = 0.1  # exponent units: lower-order terms at finite L, allowed when testing the claim only
MAX_WIDTH = 0.5  # a wider interval is never decisive (half the gap between O(L) and O(L²))
KEEP_LENGTHS = 5  # the regime never drops below this many lengths (all of them when fewer were measured)
ADEQUATE_SCATTER = 0.03  # residual scatter of log y (±3 %) that is adequate whatever the other regimes do
ADEQUATE_RATIO = 1.5  # else within this factor of the best regime's scatter


@dataclass(frozen=True)
class Fit:
    """y ≈ c·L**exponent (or a + c·L**exponent, `model`) fitted on log y; its 95 % interval (nan
    without a degree of freedom: two points)."""

    exponent: float
    ci_low: float
    ci_high: float
    n: int
    l_min: int
    l_max: int
    tail: float | None  # slope between the two longest lengths
    lengths: tuple[int, ...] = ()  # the lengths the fit used
    model: str = "c·L^k"  # or "a + c·L^k" (a fixed offset fitted; see report/verdicts.py)
    offset_share: float = 0.0  # the offset's share of the value at l_min
    scatter: float = float("nan")  # residual standard deviation of log(y)
    df: int = 0  # degrees of freedom of the interval

    def text(self) -> str:
        if math.isnan(self.ci_low):
            return f"{self.exponent:.2f}"
        return f"{self.exponent:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}]"


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (scipy)."""
    if df < 1:
        raise ValueError("t quantile needs at least one degree of freedom")
    return float(stats.t.ppf(0.975, df))


def clean_points(lengths, values) -> tuple[np.ndarray, np.ndarray]:
    """Finite positive (L, y) pairs sorted by L."""
    L = np.asarray(lengths, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(L) & np.isfinite(y) & (L > 0) & (y > 0)
    order = np.argsort(L[keep])
    return L[keep][order], y[keep][order]


def power_fit(L: np.ndarray, y: np.ndarray) -> dict:
    """log y = b + k·log L: k, its standard error, residual scatter, degrees of freedom."""
    x, z = np.log(L), np.log(y)
    sxx = float(np.sum((x - x.mean()) ** 2))
    k = float(np.sum((x - x.mean()) * (z - z.mean())) / sxx)
    resid = z - (z.mean() + k * (x - x.mean()))
    df = len(x) - 2
    scatter = math.sqrt(float(np.sum(resid ** 2)) / df) if df > 0 else float("nan")
    return {"k": k, "se": scatter / math.sqrt(sxx) if df > 0 else float("nan"), "df": df,
            "scatter": scatter, "offset_share": 0.0, "model": "c·L^k"}


def offset_fit(L: np.ndarray, y: np.ndarray, k0: float) -> dict | None:
    """log y = log(a + c·L^k), a ≥ 0 (L and y scaled to their maxima); None if the fit fails."""
    x, z = L / L.max(), np.log(y / y.max())

    def model(x, a, logc, k):
        return np.log(a + np.exp(logc) * x ** k)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, cov = optimize.curve_fit(model, x, z, p0=(0.5 * float(np.exp(z.min())), 0.0, max(k0, 0.1)),
                                        bounds=([0.0, -50.0, -1.0], [10.0, 50.0, 6.0]), maxfev=20000)
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        return None
    se = float(np.sqrt(cov[2, 2])) if np.all(np.isfinite(cov)) else float("nan")
    if not math.isfinite(se):
        return None
    df = len(x) - 3
    resid = z - model(x, *p)
    a, c, k = float(p[0]), math.exp(p[1]), float(p[2])
    share = a / (a + c * float(x[0]) ** k)
    return {"k": k, "se": se, "df": df, "scatter": math.sqrt(float(np.sum(resid ** 2)) / df),
            "offset_share": share, "model": "a + c·L^k"}


def fit_scaling(lengths, values):
    """The Fit (attnbench.report.analysis.Fit) of the claim's regime; None with fewer than two lengths.

    The regime: the widest whose fit is adequate. Candidates are all lengths, then the shortest 1,
    2, ... dropped (short lengths where something other than the claimed growth dominates:
    allocator granularity, a kernel's tile buffers still growing) while KEEP_LENGTHS remain (all of
    them when fewer were measured): a verdict never rests on fewer than 5 lengths when 5 or more
    were measured. A candidate is adequate when its residual scatter is at most ADEQUATE_SCATTER or
    within ADEQUATE_RATIO of the smallest candidate's; of those the one with the most lengths wins.
    Not the smallest scatter outright: dropping lengths always lowers it a little and costs degrees
    of freedom, trading a decisive interval for a tighter-looking fit; nor the narrowest interval,
    which would prefer a biased model that happens to be tight. The longest length is always in the
    fit; the Fit says which lengths it used."""
    L, y = clean_points(lengths, values)
    if len(np.unique(L)) < 2:
        return None
    keep = min(len(L), KEEP_LENGTHS)
    fits = [_fit(L[i:], y[i:]) for i in range(len(L) - keep + 1)]  # widest first
    scatters = [f.scatter for f in fits if math.isfinite(f.scatter)]
    if not scatters:
        return fits[0]
    bound = max(ADEQUATE_SCATTER, ADEQUATE_RATIO * min(scatters))
    return next(f for f in fits if math.isfinite(f.scatter) and f.scatter <= bound)


def _fit(L: np.ndarray, y: np.ndarray) -> Fit:
    x, z = np.log(L), np.log(y)
    tail = float((z[-1] - z[-2]) / (x[-1] - x[-2])) if x[-1] > x[-2] else None
    chosen = power_fit(L, y) if len(L) >= 3 else {"k": float((z[-1] - z[0]) / (x[-1] - x[0])), "se": float("nan"),
                                                   "df": 0, "scatter": float("nan"), "offset_share": 0.0,
                                                   "model": "c·L^k"}
    if len(np.unique(L)) >= OFFSET_MIN_LENGTHS:
        off = offset_fit(L, y, chosen["k"])
        if off is not None and off["offset_share"] >= OFFSET_MIN_SHARE:
            chosen = off
    if chosen["df"] >= 1:
        half = t975(chosen["df"]) * chosen["se"]
        lo, hi = chosen["k"] - half, chosen["k"] + half
    else:
        lo = hi = float("nan")
    return Fit(chosen["k"], lo, hi, len(L), int(L[0]), int(L[-1]), tail, lengths=tuple(int(v) for v in L),
               model=chosen["model"], offset_share=chosen["offset_share"], scatter=chosen["scatter"],
               df=chosen["df"])


def covered(lo: float, hi: float) -> list[str]:
    """The standard classes inside [lo, hi]."""
    return [name for p, name in CLASSES if lo <= p <= hi]


def causes(fit) -> list[str]:
    """Why an interval is wide: few lengths, a constant offset, noise, a short span of L."""
    out = []
    if fit.df <= 3:
        out.append(f"few lengths ({fit.n}; t quantile {t975(fit.df):.1f} at {fit.df} degrees of freedom)"
                   if fit.df >= 1 else f"few lengths ({fit.n})")
    if fit.offset_share and fit.offset_share >= 0.3:
        out.append(f"a constant offset ({100 * fit.offset_share:.0f} % of the value at L={fit.l_min})")
    if fit.scatter and math.isfinite(fit.scatter) and fit.scatter > 0.05:
        out.append(f"noise (scatter ±{100 * (math.exp(fit.scatter) - 1):.0f} % about the fit)")
    if fit.l_max < 4 * fit.l_min:
        out.append(f"a short span of L ({fit.l_min}–{fit.l_max})")
    return out


def judge(fit, claim) -> tuple[str, str]:
    """(verdict, note) for a Fit against a Claim: verdict is one of VERDICTS, or 'no fit' /
    'no claim' when there is nothing to judge."""
    if fit is None:
        return "no fit", "fewer than two lengths with data"
    if claim is None:
        return "no claim", ""
    if fit.n < MIN_LENGTHS or math.isnan(fit.ci_low):
        return "too few lengths", f"{fit.n} lengths; an exponent verdict needs at least {MIN_LENGTHS}"
    lo, hi = fit.ci_low, fit.ci_high
    b_lo, b_hi = claim.band(fit.l_min, fit.l_max)
    used = f"fit {fit.model} over L={','.join(str(v) for v in fit.lengths)}"
    if fit.offset_share:
        used += f" (a constant offset: {100 * fit.offset_share:.0f} % of the value at L={fit.l_min})"
    if hi + MODEL_TOL < b_lo or lo - MODEL_TOL > b_hi:
        side = "flatter" if hi + MODEL_TOL < b_lo else "steeper"
        return "differs", f"{side} than {claim.text}; {used}"
    others = [name for p, name in CLASSES if lo <= p <= hi and not (b_lo - 1e-9 <= p <= b_hi + 1e-9)]
    if others or hi - lo > MAX_WIDTH:
        why = causes(fit) or ["the interval is wider than the gap between classes"]
        cover = ", ".join(covered(lo, hi)) or "no standard class"
        return "inconclusive", f"interval covers {cover}; wide because of {', '.join(why)}; {used}"
    return "agrees", used
