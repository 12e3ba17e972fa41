"""Timing of a prepared zero-argument callable: warm-up, then repeats within a budget; the statistics.

On CUDA every repeat is timed with device events around the call alone, after a
256 MB write that evicts the L2 cache, so a repeat never reads a warm cache the
previous repeat left behind (a real model's attention never sees its inputs hot).
"""
from __future__ import annotations

import resource
import time
from typing import Callable

import numpy as np

from . import noise

L2_FLUSH_BYTES = 256 * 1024 * 1024
SETTLE_SPREAD = 1.10     # warm-up ends when the last SETTLE_CALLS calls are within 10% of each other
SETTLE_CALLS = 3
# ... and none of them faulted in more than this many pages: the allocator has stopped growing. A heap that still
# grows (glibc reuses freed blocks only once fragmentation settles) re-faults a whole buffer now and then; a point
# timed before that shows it as minor faults per call in its noise record.
SETTLED_FAULTS = 64
MAX_WARMUP_CALLS = 30


# Called with each call's result and its timed index (None for a warm-up call), after the call's timing:
# what verifies timed calls (integrity.TimedCalls) sees every result without moving the timings.
After = Callable[[object, "int | None"], None]


def _ignore(result, index) -> None:
    """The default `after`: the result is dropped at once, as a caller that does not keep it."""


def time_callable(fn: Callable[[], object], *, synchronize: Callable[[], None] = lambda: None, warmup: int = 1,
                  min_repeats: int = 3, max_repeats: int = 100, budget_s: float = 1.0,
                  faults: list[int] | None = None, after: After = _ignore) -> list[float]:
    """Seconds per call: `warmup` untimed calls, then at least `min_repeats`, until `budget_s` or `max_repeats`.

    `faults`, if given, receives each timed call's minor page faults (read outside the timed interval);
    `after(result, index)` runs after each call's timing.
    """
    for _ in range(warmup):
        after(fn(), None)
    synchronize()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_repeats or (len(samples) < max_repeats and time.perf_counter() < deadline):
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt if faults is not None else 0
        start = time.perf_counter()
        result = fn()
        synchronize()
        samples.append(time.perf_counter() - start)
        if faults is not None:
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        after(result, len(samples) - 1)
        del result                                               # not alive in the next call unless `after` keeps it
    return samples


def warm_up(fn: Callable[[], object], *, synchronize: Callable[[], None] = lambda: None, min_calls: int = 1,
            budget_s: float = 1.0, after: After = _ignore) -> int:
    """Call `fn` until its time settles (last SETTLE_CALLS within SETTLE_SPREAD), or budget_s / MAX_WARMUP_CALLS.

    Returns the number of warm-up calls. Caches, lazy initialisation, JIT and the
    allocator's first growth all show as early calls slower than the rest, or as calls that fault in pages.
    `after(result, None)` runs after each call's timing, so what it holds is in the steady state too.
    """
    times: list[float] = []
    faults: list[int] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < MAX_WARMUP_CALLS:
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        result = fn()
        synchronize()
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        after(result, None)
        del result
        last = times[-SETTLE_CALLS:]
        settled = (len(times) >= max(min_calls, SETTLE_CALLS) and max(last) <= SETTLE_SPREAD * min(last)
                   and max(faults[-SETTLE_CALLS:]) <= SETTLED_FAULTS)
        if settled or (len(times) >= min_calls and time.perf_counter() > deadline):
            break
    return len(times)


def time_steady(fn: Callable[[], object], *, synchronize: Callable[[], None] = lambda: None, warmup: int = 1,
                min_repeats: int = 3, max_repeats: int = 100, budget_s: float = 1.0, after: After = _ignore) -> dict:
    """Warm up until settled, then time repeats; with what the process saw meanwhile. `after` as in time_callable.

    Returns samples (s), warmup_calls, minor_faults_per_call (mean: what faulting costs the point) and
    minor_faults_median_per_call (the typical call: 0 in steady state even when the heap grew once), cpu_share (the
    process's CPU time over wall time, capped at 1: below 1 when another task held the CPU),
    involuntary context switches per second, and the machine's load around it.
    """
    warmup_calls = warm_up(fn, synchronize=synchronize, min_calls=warmup, budget_s=budget_s, after=after)
    before_sys, before_ru = noise.system_snapshot(), resource.getrusage(resource.RUSAGE_SELF)
    # Process CPU time, all threads: a backend may compute on its own pool (XLA) while the caller waits.
    cpu0, wall0 = time.process_time(), time.perf_counter()
    faults: list[int] = []
    samples = time_callable(fn, synchronize=synchronize, warmup=0, min_repeats=min_repeats,
                            max_repeats=max_repeats, budget_s=budget_s, faults=faults, after=after)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    after_ru, after_sys = resource.getrusage(resource.RUSAGE_SELF), noise.system_snapshot()
    return {"samples": samples, "warmup_calls": warmup_calls,
            # the calls' own faults: copies of checked outputs (`after`) fault outside the timed interval
            "minor_faults_per_call": float(np.mean(faults)),
            "minor_faults_median_per_call": float(np.median(faults)),
            "cpu_share": min(1.0, cpu / wall) if wall > 0 else None,
            "involuntary_switches_per_s": (after_ru.ru_nivcsw - before_ru.ru_nivcsw) / wall if wall > 0 else None,
            "timed_wall_s": wall, **noise.system_delta(before_sys, after_sys, wall)}


def time_cuda(fn: Callable[[], object], *, warmup: int = 1, min_repeats: int = 3, max_repeats: int = 100,
              budget_s: float = 1.0, after: After = _ignore) -> list[float]:
    """Seconds per call from CUDA events, with an L2 flush (not timed) before each repeat; `after` as in
    time_callable, once the device is synchronised."""
    import torch

    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    for _ in range(warmup):
        after(fn(), None)
    torch.cuda.synchronize()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < min_repeats or (len(samples) < max_repeats and time.perf_counter() < deadline):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
        after(result, len(samples) - 1)
        del result
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
