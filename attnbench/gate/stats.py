"""Statistics of the regression gate: the Mann–Whitney U test and a bootstrap confidence
interval of the ratio of two medians.

Mann–Whitney U (Mann & Whitney 1947): U₁ = R₁ − n₁(n₁+1)/2 with R₁ the rank sum of the first
sample in the pooled ranking (ties get their average rank). Two-sided p-value:
  - exact, from the permutation distribution of U, when there are no ties and n₁·n₂ ≤ 400
    (counted with the classic recurrence f(m, n, u) = f(m−1, n, u−n) + f(m, n−1, u));
  - otherwise the normal approximation with the tie correction and a continuity correction:
        μ = n₁n₂/2,  σ² = n₁n₂/12 · ((N+1) − Σ(t³−t) / (N(N−1))),  z = (|U₁ − μ| − ½) / σ.
Bootstrap (Efron 1979): both sides are resampled independently with replacement; the CI is
the percentile interval of median(cur*) / median(base*). A side made of several runs is
resampled in two stages (runs, then samples within runs: the cluster bootstrap), because on a
shared machine the run-to-run spread is often many times the within-run spread.

Honest limits: both methods assume independent samples. Timing samples of one run are
autocorrelated (thermal state, other tenants, frequency scaling), so p-values are optimistic
and the CI too narrow when the noise comes in slow waves; the gate compensates with a small
alpha (0.002, as asv does), a threshold on the effect size and a confirming re-run.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

EXACT_MAX_CELLS = 400  # exact p-value when n1*n2 <= this and there are no ties


@dataclass(frozen=True)
class MannWhitney:
    u: float  # U of the first sample: pairs (x, y) with x > y, ties counted ½
    p: float  # two-sided p-value
    method: str  # "exact" | "normal"


def rank_average(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..N with ties sharing their average rank; also the sizes of the tie groups."""
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks_sorted = np.empty(len(values))
    for s, e in zip(starts, ends):
        ranks_sorted[s:e] = (s + 1 + e) / 2.0  # average of ranks s+1 .. e
    ranks = np.empty(len(values))
    ranks[order] = ranks_sorted
    return ranks, ends - starts


@lru_cache(maxsize=256)
def _u_counts(m: int, n: int) -> tuple[int, ...]:
    """Number of orderings of m x's and n y's giving each U in 0..m*n (no ties)."""
    # f[j][u] for the current i; build up over i = 0..m with j = 0..n
    prev = [[1] + [0] * (m * n) for _ in range(n + 1)]  # i = 0: U is always 0
    for i in range(1, m + 1):
        cur = [[0] * (m * n + 1) for _ in range(n + 1)]
        cur[0][0] = 1  # j = 0: U is always 0
        for j in range(1, n + 1):
            row, up, left = cur[j], prev[j], cur[j - 1]
            for u in range(i * j + 1):
                # the largest element is an x (adds j to U) or a y (adds nothing)
                row[u] = (up[u - j] if u >= j else 0) + left[u]
        prev = cur
    return tuple(prev[n])


def _exact_p(u: float, m: int, n: int) -> float:
    counts = _u_counts(m, n)
    total = math.comb(m + n, m)
    k = int(round(u))
    lower = sum(counts[: k + 1]) / total  # P(U <= u)
    upper = sum(counts[k:]) / total  # P(U >= u)
    return min(1.0, 2.0 * min(lower, upper))


def mann_whitney(x, y) -> MannWhitney:
    """Two-sided Mann–Whitney U test of x against y (any lengths >= 1)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney needs at least one value in each sample")
    ranks, ties = rank_average(np.concatenate([x, y]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    has_ties = bool((ties > 1).any())
    if not has_ties and n1 * n2 <= EXACT_MAX_CELLS:
        return MannWhitney(u1, _exact_p(u1, n1, n2), "exact")
    n = n1 + n2
    tie_term = float(((ties.astype(float) ** 3) - ties).sum()) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var <= 0:  # every value equal: no evidence of any difference
        return MannWhitney(u1, 1.0, "normal")
    z = (abs(u1 - n1 * n2 / 2.0) - 0.5) / math.sqrt(var)
    z = max(z, 0.0)
    return MannWhitney(u1, min(1.0, math.erfc(z / math.sqrt(2.0))), "normal")


@dataclass(frozen=True)
class RatioCI:
    ratio: float  # median(cur) / median(base)
    lo: float
    hi: float


def seed_for(key: str, seed: int = 0) -> np.random.Generator:
    """A generator seeded by the case key, so each case's interval is reproducible."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def _boot_medians(groups: list[np.ndarray], rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Medians of bootstrap resamples of one side. One run: the plain bootstrap. Several runs
    (a gate's re-run, an A/B's rounds): a two-stage (cluster) bootstrap — runs drawn with
    replacement, then samples within each drawn run — so that run-to-run drift widens the
    interval instead of passing for many independent samples."""
    if len(groups) == 1:
        g = groups[0]
        return np.median(g[rng.integers(0, len(g), size=(resamples, len(g)))], axis=1)
    n_max = max(len(g) for g in groups)
    within = np.full((len(groups), resamples, n_max), np.nan)  # (runs, B, n_max), NaN-padded
    for r, g in enumerate(groups):
        within[r, :, : len(g)] = g[rng.integers(0, len(g), size=(resamples, len(g)))]
    picks = rng.integers(0, len(groups), size=(resamples, len(groups)))  # (B, runs drawn)
    rows = np.arange(resamples)
    # the j-th drawn run of resample b uses row (b + j) of that run: a run drawn twice differs
    pooled = np.concatenate([within[picks[:, j], (rows + j) % resamples] for j in range(len(groups))], axis=1)
    return np.nanmedian(pooled, axis=1)


def bootstrap_ratio(base, cur, rng: np.random.Generator, resamples: int = 2000,
                    level: float = 0.99) -> RatioCI:
    """Percentile bootstrap CI of median(cur) / median(base), the sides resampled independently.
    Each side is a sequence of samples, or a list of runs (each a sequence of samples)."""
    base_g, cur_g = _groups(base), _groups(cur)
    ratio = float(np.median(np.concatenate(cur_g)) / np.median(np.concatenate(base_g)))
    ratios = _boot_medians(cur_g, rng, resamples) / _boot_medians(base_g, rng, resamples)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(ratios, [tail, 1.0 - tail])
    return RatioCI(ratio, float(lo), float(hi))


def _groups(side) -> list[np.ndarray]:
    if len(side) and np.ndim(side[0]) == 1:
        return [np.asarray(g, dtype=float) for g in side if len(g)]
    return [np.asarray(side, dtype=float)]
