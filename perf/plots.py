"""Matplotlib (Agg) plots of a run, drawn from records only; each returns PNG bytes."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")   # reports are rendered headless, in CI and over ssh
import matplotlib.pyplot as plt  # noqa: E402

from .analysis import curves  # noqa: E402
from .derived import loglog_slope  # noqa: E402
from .records import PointResult  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _legend(ax) -> bool:
    """A legend if anything was drawn (a sweep with one N has no curves)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
        return True
    return False


def _mark_failures(ax, points, y_of):
    """An x where a curve stopped (oom/timeout/error), drawn at the last measured height."""
    ok = [r for r in points if r.status == "ok"]
    for r in points:
        if r.status != "ok" and ok:
            ax.annotate(r.status, (r.N, y_of(ok[-1])), fontsize=7, color="red")


def time_vs_n(results: list[PointResult]) -> bytes:
    """Median time vs N, log-log, fitted slope in the legend, IQR as error bars."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves(results, "N").items():
        ok = [r for r in points if r.status == "ok"]
        if not ok:
            continue
        slope = loglog_slope([r.N for r in ok], [r.time_median_s for r in ok])
        ax.errorbar([r.N for r in ok], [r.time_median_s for r in ok], yerr=[r.time_iqr_s / 2 for r in ok],
                    marker="o", ms=3, capsize=2,
                    label=f"{label} (slope {slope:.2f})" if slope is not None else label)
        _mark_failures(ax, points, lambda r: r.time_median_s)
    ax.set(xscale="log", yscale="log", xlabel="N (= M)", ylabel="median time [s]", title="time vs N")
    _legend(ax)
    return _png(fig)


def memory_vs_n(results: list[PointResult]) -> bytes:
    """Measured peak bytes vs N per curve, with the predicted N^2 pattern size as a dashed line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    predicted = {}
    for label, points in curves(results, "N").items():
        ok = [r for r in points if r.status == "ok" and r.peak_bytes and r.peak_bytes > 0]
        for r in points:
            predicted[r.N] = max(predicted.get(r.N, 0), r.predicted_pattern_bytes or 0)
        if not ok:
            continue
        slope = loglog_slope([r.N for r in ok], [r.peak_bytes for r in ok])
        ax.plot([r.N for r in ok], [r.peak_bytes / 2 ** 20 for r in ok], marker="o", ms=3,
                label=f"{label} (slope {slope:.2f})" if slope is not None else label)
        _mark_failures(ax, points, lambda r: r.peak_bytes / 2 ** 20)
    if predicted:
        xs = sorted(predicted)
        ax.plot(xs, [predicted[x] / 2 ** 20 for x in xs], "k--", label="predicted N² pattern (B·H·N·M·itemsize)")
    ax.set(xscale="log", yscale="log", xlabel="N (= M)", ylabel="peak memory of the call [MiB]",
           title="memory vs N")
    _legend(ax)
    return _png(fig)


def time_vs_h(results: list[PointResult]) -> bytes:
    """Median time vs number of heads H."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves(results, "H").items():
        ok = [r for r in points if r.status == "ok"]
        ax.plot([r.H for r in ok], [r.time_median_s for r in ok], marker="o", ms=3, label=label)
    ax.set(xscale="log", yscale="log", xlabel="H (heads)", ylabel="median time [s]", title="time vs H")
    if not _legend(ax):
        ax.text(0.5, 0.5, "only one H in this sweep (use --heads 2,4,8)", ha="center", transform=ax.transAxes)
    return _png(fig)


def fraction_of_peak(results: list[PointResult]) -> bytes:
    """Fraction of the roofline (min(measured matmul peak, measured bandwidth x intensity)) vs N."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves(results, "N").items():
        ok = [r for r in points if r.status == "ok" and r.fraction_of_peak]
        if ok:
            ax.plot([r.N for r in ok], [r.fraction_of_peak for r in ok], marker="o", ms=3, label=label)
    ax.set(xscale="log", xlabel="N (= M)", ylabel="fraction of roofline peak", title="fraction of peak")
    _legend(ax)
    return _png(fig)


PLOTS = {"time_vs_n.png": time_vs_n, "memory_vs_n.png": memory_vs_n, "time_vs_h.png": time_vs_h,
         "fraction_of_peak.png": fraction_of_peak}
