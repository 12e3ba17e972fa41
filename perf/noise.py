"""Stage 3, measurement (across processes): one point from several fresh processes, and how noisy it was.

In: the per-process fields of measure.py (its samples, what the process saw). Out: the point's fields (`merge`):
pooled samples, the median of the process medians, a between-process interval, and the noise verdict with
its evidence; worker.py keeps the calmest of a noisy point's re-measured attempts (`noise_score`).

Calls within one process share its allocator layout, page placement and whatever the machine was doing at the
time, so their spread says little about a rerun. The point's median is the median of the process medians and its
95% interval a t-interval on their logarithms (times are positive and spread multiplicatively): it describes
what another run of the same code would read.

How noisy a measurement was: the machine's load around it and what the samples themselves show.

Two kinds of evidence, kept apart:

- the *system* around a point (`system_snapshot`, read before and after): load
  average, runnable tasks, CPU pressure stall time (/proc/pressure/cpu, PSI) and
  steal time (/proc/stat). They say the machine was busy, not that this point
  suffered from it.
- the *point's own* signs (`sample_signs`, `verdict`): the share of wall time
  the worker actually had a CPU, the spread of its samples, their quantization,
  and the disagreement between fresh processes. These decide `noisy`.

Thresholds are named constants with the reason beside each.
"""
from __future__ import annotations

import os

import numpy as np

from .stats import log_t_interval, summarize

METHOD = ("Each point is measured in several fresh processes (its median is the median of the process medians, "
          "its 95% interval a t-interval over them: what a rerun would read), each warmed up until its time "
          "settles, with glibc keeping freed memory (steady state, as in a long-running process). A point is "
          "flagged noisy, after bounded re-measuring, when its worker had a CPU for < 90% of the timed wall "
          "time, its samples spread > 10% (robust CV), its processes disagree by > 10%, or its samples come "
          "in timer/scheduler steps.")
# A point is noisy when any of these is crossed (each says why in `noise_reasons`):
MIN_CPU_SHARE = 0.90     # the worker ran < 90% of the timed wall time: others held its CPU for > 10% of it
MAX_ROBUST_CV = 0.10     # spread of one process's samples (IQR / 1.349 / median) above 10%
MAX_BETWEEN_CV = 0.10    # fresh processes' medians differ by more than 10% (std / mean)
QUANTUM_MIN_FRACTION = 0.03   # gaps between sample clusters >= 3% of the median count as steps
# A fault costs about 0.5 us (trap plus zeroing a 4 KiB page); a call whose faults cost > 2% of it is not in
# steady state: it measures the kernel's page allocator as much as the attention.
FAULT_COST_S = 0.5e-6
MAX_FAULT_SHARE = 0.02


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def system_snapshot() -> dict:
    """Load average (1 min), runnable tasks now, PSI cpu 'some' stall total (us) and steal jiffies, where readable."""
    snap: dict = {}
    load = _read("/proc/loadavg")
    if load:
        parts = load.split()
        snap["load1"] = float(parts[0])
    stat = _read("/proc/stat")
    if stat:
        for line in stat.splitlines():
            if line.startswith("cpu "):
                fields = line.split()
                snap["steal_jiffies"] = int(fields[8]) if len(fields) > 8 else 0
            elif line.startswith("procs_running"):
                snap["procs_running"] = int(line.split()[1])
    psi = _read("/proc/pressure/cpu")
    if psi:
        some = next((ln for ln in psi.splitlines() if ln.startswith("some")), "")
        values = dict(kv.split("=") for kv in some.split()[1:])
        if "total" in values:
            snap["psi_some_total_us"] = int(values["total"])
            snap["psi_some_avg10"] = float(values["avg10"])
    return snap


def system_delta(before: dict, after: dict, wall_s: float) -> dict:
    """What the machine did during `wall_s` seconds: load, runnable tasks, CPU stall share and steal share."""
    out = {"load1_before": before.get("load1"), "load1_after": after.get("load1"),
           "procs_running_before": before.get("procs_running"), "procs_running_after": after.get("procs_running")}
    if "psi_some_total_us" in before and "psi_some_total_us" in after and wall_s > 0:
        # share of the time at least one runnable task waited for a CPU (machine-wide, includes ours)
        out["cpu_pressure"] = (after["psi_some_total_us"] - before["psi_some_total_us"]) / 1e6 / wall_s
    if "steal_jiffies" in before and "steal_jiffies" in after and wall_s > 0:
        hz = os.sysconf("SC_CLK_TCK")
        out["steal_share"] = (after["steal_jiffies"] - before["steal_jiffies"]) / hz / wall_s / (os.cpu_count() or 1)
    return out


def robust_cv(samples) -> float | None:
    """IQR / 1.349 / median: the coefficient of variation a normal spread would have, blind to a few outliers."""
    x = np.asarray(samples, dtype=float)
    if len(x) < 4 or np.median(x) <= 0:
        return None
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return float((q3 - q1) / 1.349 / med)


def quantum(samples) -> float | None:
    """The step (s) the samples come in, if they sit in tight clusters spaced by multiples of one step; else None.

    A coarse timer or a scheduler tick shows as samples that take only a few
    values (e.g. 20.1, 24.1, 28.1 ms: a 4 ms tick) instead of a continuous
    spread. Gaps between sorted samples are then either tiny (within a cluster,
    < 0.5% of the median) or steps (>= QUANTUM_MIN_FRACTION of it), hardly ever
    in between; a continuous spread has many gaps in between.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    if len(x) < 6:
        return None
    med = float(np.median(x))
    gaps = np.diff(x)
    steps = gaps[gaps >= QUANTUM_MIN_FRACTION * med]
    in_between = np.count_nonzero((gaps >= 0.005 * med) & (gaps < QUANTUM_MIN_FRACTION * med))
    if len(steps) < 2 or in_between > 0.1 * len(gaps) or len(steps) + 1 > len(x) // 2:
        return None
    step = float(np.min(steps))
    multiples = steps / step
    return step if np.all(np.abs(multiples - np.round(multiples)) < 0.15) else None


def between_cv(process_medians) -> float | None:
    """Std / mean of the per-process medians (None with fewer than 2 processes)."""
    m = np.asarray(process_medians, dtype=float)
    if len(m) < 2:
        return None
    return float(np.std(m, ddof=1) / np.mean(m))


def fault_share(faults_per_call: float | None, median_s: float | None) -> float | None:
    """Estimated share of a call's time spent in minor page faults."""
    if faults_per_call is None or not median_s:
        return None
    return faults_per_call * FAULT_COST_S / median_s


def verdict(noise: dict) -> list[str]:
    """Reasons a point's timing is noisy (empty: trustworthy), from the fields `noise` holds."""
    reasons = []
    share = noise.get("cpu_share")
    if share is not None and share < MIN_CPU_SHARE:
        reasons.append(f"worker had a CPU only {share:.0%} of the timed wall time")
    cv = noise.get("robust_cv")
    if cv is not None and cv > MAX_ROBUST_CV:
        reasons.append(f"samples spread {cv:.0%} (robust CV)")
    bcv = noise.get("between_cv")
    if bcv is not None and bcv > MAX_BETWEEN_CV:
        reasons.append(f"fresh processes disagree by {bcv:.0%} (CV of their medians)")
    q = noise.get("quantum_s")
    if q:
        reasons.append(f"samples quantized in {q * 1e3:.3g} ms steps")
    return reasons


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
    cvs = [robust_cv(r["samples"]) for r in runs]
    quanta = [quantum(r["samples"]) for r in runs]
    faults = _median_of(r.get("minor_faults_per_call") for r in runs)
    share = fault_share(faults, median)
    info = {
        "processes": len(runs), "threads": first.get("threads"), "cpus": first.get("cpus"),
        "freed_memory_kept": first.get("freed_memory_kept"),
        "warmup_calls": max((r.get("warmup_calls") or 0) for r in runs),
        "minor_faults_per_call": faults, "fault_time_share": share,
        "minor_faults_median_per_call": _median_of(r.get("minor_faults_median_per_call") for r in runs),
        "steady_state": share is None or share <= MAX_FAULT_SHARE,
        "cpu_share": min((r["cpu_share"] for r in runs if r.get("cpu_share") is not None), default=None),
        "involuntary_switches_per_s": max((r.get("involuntary_switches_per_s") or 0) for r in runs),
        "robust_cv": max((c for c in cvs if c is not None), default=None),
        "between_cv": between_cv(process_medians),
        "quantum_s": next((q for q in quanta if q), None),
        "load1_before": first.get("load1_before"), "load1_after": last.get("load1_after"),
        "procs_running_max": max((r.get(k) or 0) for r in runs for k in ("procs_running_before",
                                                                            "procs_running_after")),
        "cpu_pressure": max((r["cpu_pressure"] for r in runs if r.get("cpu_pressure") is not None), default=None),
        "steal_share": max((r["steal_share"] for r in runs if r.get("steal_share") is not None), default=None),
    }
    reasons = verdict(info)
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
    parts = [(n.get("robust_cv") or 0) / MAX_ROBUST_CV, (n.get("between_cv") or 0) / MAX_BETWEEN_CV,
             (1 - (n.get("cpu_share") or 1)) / (1 - MIN_CPU_SHARE), 2.0 if n.get("quantum_s") else 0.0]
    return max(parts)
