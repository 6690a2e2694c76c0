"""Statistics of the regression gate: the Mann–Whitney U test and a bootstrap confidence
interval of the ratio of two medians.

Mann–Whitney U (Mann & Whitney 1947), computed by scipy.stats.mannwhitneyu: U₁ counts the pairs
(x, y) with x > y, ties ½. Two-sided p-value: exact (the permutation distribution of U) when
there are no ties and n₁·n₂ ≤ 400, otherwise the normal approximation with the tie correction
and a continuity correction.
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

import zlib
from dataclasses import dataclass

import numpy as np

EXACT_MAX_CELLS = 400  # exact p-value when n1*n2 <= this and there are no ties


@dataclass(frozen=True)
class MannWhitney:
    u: float  # U of the first sample: pairs (x, y) with x > y, ties counted ½
    p: float  # two-sided p-value
    method: str  # "exact" | "normal"


def mann_whitney(x, y) -> MannWhitney:
    """Two-sided Mann–Whitney U test of x against y (any lengths >= 1), by scipy.stats.mannwhitneyu:
    the exact permutation distribution when there are no ties and n₁·n₂ ≤ EXACT_MAX_CELLS, else the
    normal approximation with tie and continuity corrections."""
    from scipy.stats import mannwhitneyu  # scipy loads in ~0.2 s: only when a comparison runs

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) == 0 or len(y) == 0:
        raise ValueError("mann_whitney needs at least one value in each sample")
    pooled = np.concatenate([x, y])
    has_ties = len(np.unique(pooled)) < len(pooled)
    if np.all(pooled == pooled[0]):  # every value equal: no evidence of any difference
        return MannWhitney(len(x) * len(y) / 2.0, 1.0, "normal")
    method = "exact" if not has_ties and len(x) * len(y) <= EXACT_MAX_CELLS else "asymptotic"
    res = mannwhitneyu(x, y, alternative="two-sided", method=method, use_continuity=True)
    return MannWhitney(float(res.statistic), min(1.0, float(res.pvalue)), "exact" if method == "exact" else "normal")


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
