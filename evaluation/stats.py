"""Paired statistics for comparing two models on the same items: bootstrap intervals and McNemar.

Every comparison the report prints is between two models scored on the same items (benchmark
problems, or held-out traces), so the uncertainty that matters is that of *which items* were
drawn, with the pairing kept: one bootstrap replicate draws item indices with replacement and
uses the same indices for both models (a difference of accuracies then varies only through the
items where the models disagree). Intervals are percentile intervals of the replicates
(``scipy.stats.bootstrap``); the Generator is seeded per call from ``seed``, so the same inputs
give the same numbers whatever else the report computes. For binary per-item outcomes, the exact
McNemar test: under "no difference" each discordant item is a fair coin, so p is the two-sided
exact binomial probability of a split at least as uneven as the one seen (p = 1 without any).

A difference whose interval contains 0 (or whose McNemar p is not below 1 - confidence) is not
distinguishable from noise at that confidence.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Replicates drawn per batch are capped so that batch x items stays near this many values:
# 10,000 replicates of a 5,000-problem benchmark at once would hold ~1 GB of resampled arrays.
_VALUES_PER_BATCH = 1_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate, its bootstrap interval over ``n`` items, and McNemar's p where it applies."""
    estimate: float
    low: float
    high: float
    n: int
    p: float | None = None

    @property
    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def is_noise(self, confidence: float) -> bool:
        """Not distinguishable from noise: the interval contains 0, or the exact test does not reject
        at the same level. With few discordant problems the percentile interval can exclude 0 while
        McNemar cannot (4 to 0 of 20: the interval misses 0, p = 0.125), and the exact test is the
        one that holds its level there."""
        return self.contains_zero or (self.p is not None and self.p >= 1.0 - confidence)

    def as_json(self) -> dict:
        return {"low": self.low, "high": self.high, "p": self.p}


def _as_array(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: expected a flat sequence of finite numbers")
    return arr


def _percentile_interval(data: tuple[np.ndarray, ...], statistic, paired: bool, resamples: int, seed: int,
                         confidence: float) -> tuple[float, float]:
    from scipy.stats import bootstrap

    n = len(data[0])
    res = bootstrap(data, statistic, n_resamples=resamples, batch=max(1, _VALUES_PER_BATCH // n), vectorized=True,
                    paired=paired, confidence_level=confidence, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _mean_difference(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def bootstrap_mean(values: Sequence[float], resamples: int = 10_000, seed: int = 0,
                   confidence: float = 0.95) -> Interval | None:
    """The mean of per-item values (an accuracy, from 0/1 verdicts) with its percentile interval;
    None below two items, where resampling says nothing. ``p`` is None: there is no null here."""
    arr = _as_array(values, "bootstrap_mean")
    if len(arr) < 2:
        return None
    low, high = _percentile_interval((arr,), _mean, False, resamples, seed, confidence)
    return Interval(float(arr.mean()), low, high, len(arr))


def is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0.0) | (values == 1.0)))


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact two-sided McNemar p for paired 0/1 outcomes of two models on the same items."""
    x, y = _as_array(a, "mcnemar_exact"), _as_array(b, "mcnemar_exact")
    if len(x) != len(y):
        raise ValueError(f"mcnemar_exact: {len(x)} and {len(y)} outcomes; the pairs must align")
    if not (is_binary(x) and is_binary(y)):
        raise ValueError("mcnemar_exact: outcomes must be 0 or 1 (one verdict per item)")
    only_a = int(np.sum((x == 1.0) & (y == 0.0)))
    only_b = int(np.sum((x == 0.0) & (y == 1.0)))
    if only_a + only_b == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue)


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0,
                      confidence: float = 0.95, mcnemar: bool = True) -> Interval | None:
    """mean(a) - mean(b) over aligned items, with the paired bootstrap interval and, when ``mcnemar``
    and both are 0/1 outcomes, the exact McNemar p (None otherwise, e.g. several samples per problem
    or losses). None below two items."""
    x, y = _as_array(a, "paired_difference"), _as_array(b, "paired_difference")
    if len(x) != len(y):
        raise ValueError(f"paired_difference: {len(x)} and {len(y)} values; the pairs must align")
    if len(x) < 2:
        return None
    low, high = _percentile_interval((x, y), _mean_difference, True, resamples, seed, confidence)
    p = mcnemar_exact(x, y) if mcnemar and is_binary(x) and is_binary(y) else None
    return Interval(float(x.mean() - y.mean()), low, high, len(x), p)


def pair_by_id(a: Mapping, b: Mapping) -> tuple[list, list[float], list[float]]:
    """The ids both mappings score (in a fixed order) and their two aligned value lists."""
    ids = sorted(set(a) & set(b), key=str)
    return ids, [a[i] for i in ids], [b[i] for i in ids]
