"""One point from several fresh processes: pooled samples, between-process interval, noise verdict.

Calls within one process share its allocator layout, page placement and
whatever the machine was doing at the time, so their spread says little about
a rerun. The point's median is the median of the process medians and its 95%
interval is a t-interval on their logarithms (times are positive and spread
multiplicatively): it describes what another run of the same code would read.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from . import noise
from .stats import summarize


def log_t_interval(values, confidence: float = 0.95) -> tuple[float, float] | None:
    """exp(mean(log v) -+ t * sd / sqrt(k)): interval of the typical value over k >= 2 positive values."""
    v = np.log(np.asarray(values, dtype=float))
    if len(v) < 2:
        return None
    half = stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * np.std(v, ddof=1) / np.sqrt(len(v))
    return float(np.exp(v.mean() - half)), float(np.exp(v.mean() + half))


def _median_of(values):
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def merge(runs: list[dict]) -> dict:
    """The point's fields from the per-process results of `measure_case` (first one carries the accuracy)."""
    process_medians = [float(np.median(r["samples"])) for r in runs]
    samples = [s for r in runs for s in r["samples"]]
    median = float(np.median(process_medians))
    summary = summarize(samples)
    interval = log_t_interval(process_medians)
    first, last = runs[0], runs[-1]
    cvs = [noise.robust_cv(r["samples"]) for r in runs]
    quanta = [noise.quantum(r["samples"]) for r in runs]
    faults = _median_of(r.get("minor_faults_per_call") for r in runs)
    share = noise.fault_share(faults, median)
    info = {
        "processes": len(runs), "threads": first.get("threads"), "cpus": first.get("cpus"),
        "freed_memory_kept": first.get("freed_memory_kept"),
        "warmup_calls": max((r.get("warmup_calls") or 0) for r in runs),
        "minor_faults_per_call": faults, "fault_time_share": share,
        "minor_faults_median_per_call": _median_of(r.get("minor_faults_median_per_call") for r in runs),
        "steady_state": share is None or share <= noise.MAX_FAULT_SHARE,
        "cpu_share": min((r["cpu_share"] for r in runs if r.get("cpu_share") is not None), default=None),
        "involuntary_switches_per_s": max((r.get("involuntary_switches_per_s") or 0) for r in runs),
        "robust_cv": max((c for c in cvs if c is not None), default=None),
        "between_cv": noise.between_cv(process_medians),
        "quantum_s": next((q for q in quanta if q), None),
        "load1_before": first.get("load1_before"), "load1_after": last.get("load1_after"),
        "procs_running_max": max((r.get(k) or 0) for r in runs for k in ("procs_running_before",
                                                                            "procs_running_after")),
        "cpu_pressure": max((r["cpu_pressure"] for r in runs if r.get("cpu_pressure") is not None), default=None),
        "steal_share": max((r["steal_share"] for r in runs if r.get("steal_share") is not None), default=None),
    }
    reasons = noise.verdict(info)
    return {
        "first_call_s": first["first_call_s"], "peak_bytes": int(first["peak_bytes"]),   # warmed by the accuracy check
        "samples": samples, "time_median_s": median, "time_iqr_s": summary["time_iqr_s"],
        "time_ci95_s": list(interval) if interval else summary["time_ci95_s"],
        "process_medians_s": process_medians, "error_vs_ref": first.get("error_vs_ref"),
        "accurate": first.get("accurate"), "noisy": bool(reasons), "noise": {**info, "reasons": reasons},
    }


def noise_score(fields: dict) -> float:
    """Lower is calmer: how far the worst sign is past its threshold (ranks re-measured attempts)."""
    n = fields["noise"]
    parts = [(n.get("robust_cv") or 0) / noise.MAX_ROBUST_CV, (n.get("between_cv") or 0) / noise.MAX_BETWEEN_CV,
             (1 - (n.get("cpu_share") or 1)) / (1 - noise.MIN_CPU_SHARE), 2.0 if n.get("quantum_s") else 0.0]
    return max(parts)
