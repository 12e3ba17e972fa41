"""Timing of a prepared zero-argument callable: warm-up, then repeats within a budget; the statistics.

On CUDA every repeat is timed with device events around the call alone, after a
256 MB write that evicts the L2 cache, so a repeat never reads a warm cache the
previous repeat left behind (a real model's attention never sees its inputs hot).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

L2_FLUSH_BYTES = 256 * 1024 * 1024


def time_callable(fn: Callable[[], object], *, synchronize: Callable[[], None] = lambda: None, warmup: int = 1,
                  min_repeats: int = 3, max_repeats: int = 100, budget_s: float = 1.0) -> list[float]:
    """Seconds per call: `warmup` untimed calls, then at least `min_repeats`, until `budget_s` or `max_repeats`."""
    for _ in range(warmup):
        fn()
    synchronize()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_repeats or (len(samples) < max_repeats and time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        synchronize()
        samples.append(time.perf_counter() - start)
    return samples


def time_cuda(fn: Callable[[], object], *, warmup: int = 1, min_repeats: int = 3, max_repeats: int = 100,
              budget_s: float = 1.0) -> list[float]:
    """Seconds per call from CUDA events, with an L2 flush (not timed) before each repeat."""
    import torch

    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_repeats or (len(samples) < max_repeats and time.perf_counter() < deadline):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return samples


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
