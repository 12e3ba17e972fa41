"""Wall-clock timing of a prepared zero-argument callable: warm-up, then repeats within a budget."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


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


def summarize(samples: list[float]) -> dict:
    """Median and inter-quartile range of timing samples, in seconds."""
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"time_median_s": float(median), "time_iqr_s": float(q3 - q1), "repeats": len(samples)}
