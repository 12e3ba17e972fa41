"""The statistics of perf in one place: a timing's median and intervals, and the tests `compare` runs.

In: timing samples (seconds) or per-process figures. Out: numbers; nothing here reads files or runs code.

- `summarize`: a timing's median, inter-quartile range and bootstrap interval of the median (one process);
- `loglog_slope`: how time or memory grows with N (a fitted power);
- `log_t_interval`: the interval of a point's typical time over its fresh processes (times spread multiplicatively);
"""
from __future__ import annotations

import numpy as np
from scipy.stats import t as student_t


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
