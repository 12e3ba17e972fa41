"""The statistics of perf in one place: a timing's median and intervals, and the tests `compare` runs.

In: timing samples (seconds) or per-process figures. Out: numbers; nothing here reads files or runs code.

- `summarize`: a timing's median, inter-quartile range and bootstrap interval of the median (one process);
- `loglog_slope`: how time or memory grows with N (a fitted power);
- `slower_p` (two runs: Welch's t on log per-process medians) and `ratio_p` (interleaved pairs: a one-sample
  t on log per-process ratios), one-sided against a threshold, and `holm` over the points compared (`ALPHA`);
- `log_t_interval`: the interval of a point's typical time over its fresh processes (times spread multiplicatively);
"""
from __future__ import annotations

import numpy as np
from scipy.stats import t as student_t

ALPHA = 0.05             # compare's significance level, after Holm's correction over the points compared


def median_ci(samples, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median (seeded, so a re-render gives the same numbers)."""
    x = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, len(x), size=(resamples, len(x)))], axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(medians, [alpha, 1 - alpha])
    return float(lo), float(hi)


def summarize(samples: list[float]) -> dict:
    """Median, inter-quartile range and 95% bootstrap CI of the median of timing samples, in seconds."""
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    lo, hi = median_ci(samples)
    return {"time_median_s": float(median), "time_iqr_s": float(q3 - q1), "time_ci95_s": [lo, hi],
            "repeats": len(samples)}


def log_t_interval(values, confidence: float = 0.95) -> tuple[float, float] | None:
    """exp(mean(log v) -+ t * sd / sqrt(k)): interval of the typical value over k >= 2 positive values."""
    v = np.log(np.asarray(values, dtype=float))
    if len(v) < 2:
        return None
    half = student_t.ppf(0.5 + confidence / 2, len(v) - 1) * np.std(v, ddof=1) / np.sqrt(len(v))
    return float(np.exp(v.mean() - half)), float(np.exp(v.mean() + half))


def loglog_slope(xs, ys) -> float | None:
    """Slope of log(y) against log(x) by least squares; None with fewer than 2 distinct positive x."""
    pts = [(x, y) for x, y in zip(xs, ys) if x and y and x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def slower_p(old_medians, new_medians, threshold: float) -> float | None:
    """One-sided Welch t-test p of H0 "new/old <= threshold" on log per-process medians (None: < 2 each)."""
    a, b = np.log(np.asarray(old_medians, float)), np.log(np.asarray(new_medians, float))
    if len(a) < 2 or len(b) < 2:
        return None
    excess = b.mean() - a.mean() - np.log(threshold)
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if se == 0:
        return 0.0 if excess > 0 else 1.0
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(student_t.sf(excess / se, df))


def ratio_p(process_ratios, threshold: float) -> float | None:
    """One-sided one-sample t-test p of H0 "B/A <= threshold" on the log per-process ratios (None: < 2)."""
    x = np.log(np.asarray(process_ratios, float))
    if len(x) < 2:
        return None
    excess, se = x.mean() - np.log(threshold), x.std(ddof=1) / np.sqrt(len(x))
    if se == 0:
        return 0.0 if excess > 0 else 1.0
    return float(student_t.sf(excess / se, len(x) - 1))


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None; m counts the tested ones)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, adjusted, running = len(tested), list(p_values), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
