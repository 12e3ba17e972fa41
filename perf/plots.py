"""Matplotlib (Agg) plots of a run, drawn from records only.

Each plot function returns PNG bytes, or a sentence saying why there is no plot
(e.g. only one H was swept). What every series shares (dtype, B, H, D, ...) goes
in the title, so legend entries stay short; legends sit outside the axes; x
ticks are the swept values; times are in milliseconds.
"""
from __future__ import annotations

import io
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")   # reports are rendered headless, in CI and over ssh
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator, PercentFormatter  # noqa: E402

from .records import DECODE_BYTES, DECODE_MAX_N, PointResult, is_decode  # noqa: E402
from .stats import loglog_slope  # noqa: E402

FIGSIZE, DPI = (10, 5.2), 100           # 1000 px wide: readable at full page width
MIB = 2 ** 20
MEMORY_LINEAR_BELOW_MIB = 1.0           # symlog: zero and sub-MiB readings stay on the axis
_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")   # 1, 10, 100 rather than 10^0, 10^1, 10^2
STATUS_MARKERS = {"oom": "v", "timeout": "s", "error": "X"}


def _parts(r: PointResult, vary: str) -> tuple[str, ...]:
    """A series' identity, one readable part per dimension except the varied one. Along M (the decode regime)
    the KV layout joins the backend's name unless dense, so ragged and paged points are labelled as such."""
    if vary == "M":
        backend = r.backend if r.kv_layout == "dense" else f"{r.backend} [{r.kv_layout}]"
        heads = f"H{r.H}" if r.Hkv == r.H else f"H{r.H}/Hkv{r.Hkv}"
        return (backend, r.pass_, r.dtype, f"B{r.B}", heads, f"N{r.N}", f"D{r.D}",
                f"causal {r.causal}" if r.causal else "not causal")
    fixed = {"N": f"H{r.H}", "H": f"N{r.N}"}[vary]
    return (r.backend, r.pass_, r.dtype, f"B{r.B}", fixed, f"D{r.D}", f"causal {r.causal}" if r.causal else "not causal")


def series(results: list[PointResult], vary: str) -> dict[tuple[str, ...], list[PointResult]]:
    """Measured records grouped by everything but `vary` ("N" or "H"), each sorted along it.

    A lone point is kept when it shares a curve's settings (a backend capped at one N) or when there is
    no curve at all (a one-N sweep); otherwise it is another plot's point (the H sweep's, in the N plot).
    """
    groups: dict[tuple, list[PointResult]] = defaultdict(list)
    swept_m = _on_m_curves(results) if vary != "M" else set()     # the decode plots' points: not an N or H curve
    for r in results:
        if r.status != "skipped" and id(r) not in swept_m:
            groups[_parts(r, vary)].append(r)
    curves = {k for k, v in groups.items() if len({getattr(r, vary) for r in v}) > 1}
    settings = {k[1:] for k in curves}                            # a curve's settings, backend aside
    return {k: sorted(v, key=lambda r: getattr(r, vary)) for k, v in sorted(groups.items())
            if not curves or k[1:] in settings}


def _on_m_curves(results: list[PointResult]) -> set[int]:
    """ids of the records on a curve along M (N fixed, the cache length swept: --kv-lens, --decode)."""
    by_m: dict[tuple, list[PointResult]] = defaultdict(list)
    for r in results:
        if r.status != "skipped":
            by_m[_parts(r, "M")].append(r)
    return {id(r) for rs in by_m.values() if len({r.M for r in rs}) > 1 for r in rs}


def short_labels(keys) -> tuple[dict[tuple, str], str]:
    """({key: the parts that differ between series}, the parts every series shares, for the title)."""
    keys = list(keys)
    if not keys:
        return {}, ""
    shared = [i for i in range(len(keys[0])) if len({k[i] for k in keys}) == 1]
    if len(keys) > 1 and len(shared) == len(keys[0]):
        shared = shared[1:]
    labels = {k: " ".join(p for i, p in enumerate(k) if i not in shared) or k[0] for k in keys}
    return labels, ", ".join(keys[0][i] for i in shared)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _x_ticks(ax, values, *, log: bool = True) -> None:
    """Ticks exactly at the swept values, written as integers (not 3x10^2)."""
    if log:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
    ax.xaxis.set_major_formatter(_PLAIN)
    ax.xaxis.set_minor_locator(NullLocator())


def _finish(ax, title: str, shared: str, note: str) -> None:
    ax.set_title(f"{title}\n{shared}" if shared else title, fontsize=12)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    if note:
        ax.annotate(note, (0, -0.14), xycoords="axes fraction", fontsize=9, color="#444", va="top")


def _draw(results, vary: str, value, *, title: str, ylabel: str, note: str, error=None, yscale="log",
          needs_two: bool = False, percent: bool = False):
    """One figure: a line (or lone markers) per series of `value(r)` over `vary`; failures as labelled markers."""
    groups = series(results, vary)
    if needs_two:
        groups = {k: v for k, v in groups.items() if len({getattr(r, vary) for r in v}) > 1}
    groups = {k: v for k, v in groups.items() if any(r.status == "ok" and value(r) is not None for r in v)}
    if not groups:
        return None
    labels, shared = short_labels(groups)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    xs_all = []
    for key, points in groups.items():
        ok = [r for r in points if r.status == "ok" and value(r) is not None]
        xs, ys = [getattr(r, vary) for r in ok], [value(r) for r in ok]
        xs_all += [getattr(r, vary) for r in points]
        slope = loglog_slope(xs, ys) if vary == "N" and yscale == "log" else None
        label = labels[key] + (f"  (slope {slope:.2f})" if slope is not None else "")
        style = dict(marker="o", ms=5, label=label, linestyle="-" if len(xs) > 1 else "none")
        if error is not None:
            line = ax.errorbar(xs, ys, yerr=[error(r) for r in ok], capsize=3, **style)[0]
        else:
            line = ax.plot(xs, ys, **style)[0]
        for r in points:
            if r.status in STATUS_MARKERS and ys:
                ax.plot([getattr(r, vary)], [ys[-1]], STATUS_MARKERS[r.status], color=line.get_color(), ms=9)
                ax.annotate(r.status, (getattr(r, vary), ys[-1]), xytext=(6, 4), textcoords="offset points",
                            fontsize=9, color=line.get_color())
    _x_ticks(ax, xs_all, log=len(set(xs_all)) > 1)
    if yscale == "symlog":
        ax.set_yscale("symlog", linthresh=MEMORY_LINEAR_BELOW_MIB)
        ax.set_ylim(bottom=0)
    else:
        ax.set_yscale(yscale)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0) if percent else _PLAIN)
    ax.set(xlabel={"N": "N (query length; M = N unless --kv-len)", "H": "H (heads)",
                   "M": "M (keys in the KV cache)"}[vary], ylabel=ylabel)
    _finish(ax, title, shared, note)
    return _png(fig)


def time_vs_n(results: list[PointResult]):
    """Median time per call vs N, log-log, fitted slope in the legend, IQR as error bars."""
    png = _draw(results, "N", lambda r: r.time_median_s and r.time_median_s * 1e3,
                error=lambda r: (r.time_iqr_s or 0) * 1e3 / 2, title="Time per call vs N",
                ylabel="median time per call [ms]",
                note="Bars: interquartile range of the timed calls (± IQR/2). Slope: least-squares fit of "
                     "log time on log N (2 = quadratic).")
    return png or "No plot: no point was measured ok on a curve along N (a sweep along M has the decode plots)."


def memory_vs_n(results: list[PointResult]):
    """Measured peak MiB vs N per series, with the predicted N^2 pattern as a dashed line."""
    ok = [r for r in results if r.status == "ok" and r.peak_bytes is not None]
    if not ok:
        return "No plot: no point was measured ok."
    if not any(r.status == "ok" and r.peak_bytes is not None for rs in series(results, "N").values() for r in rs):
        return "No plot: every point lies on a curve along M (see the decode plots)."
    return _memory(results)


def _memory(results):
    groups = {k: v for k, v in series(results, "N").items()
              if any(r.status == "ok" and r.peak_bytes is not None for r in v)}
    labels, shared = short_labels(groups)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    xs_all, predicted = [], {}
    for key, points in groups.items():
        ok = [r for r in points if r.status == "ok" and r.peak_bytes is not None]
        xs, ys = [r.N for r in ok], [r.peak_bytes / MIB for r in ok]
        xs_all += [r.N for r in points]
        for r in points:
            predicted[r.N] = max(predicted.get(r.N, 0), r.predicted_pattern_bytes or 0)
        slope = loglog_slope(xs, ys)
        line = ax.plot(xs, ys, marker="o", ms=5, linestyle="-" if len(xs) > 1 else "none",
                       label=labels[key] + (f"  (slope {slope:.2f})" if slope is not None else ""))[0]
        for r in points:
            if r.status in STATUS_MARKERS and ys:
                ax.plot([r.N], [ys[-1]], STATUS_MARKERS[r.status], color=line.get_color(), ms=9)
                ax.annotate(r.status, (r.N, ys[-1]), xytext=(6, 4), textcoords="offset points", fontsize=9,
                            color=line.get_color())
    if predicted:
        xs = sorted(predicted)
        ax.plot(xs, [predicted[x] / MIB for x in xs], "k--", label="one N² pattern (B·H·N·M·itemsize)")
    _x_ticks(ax, xs_all, log=len(set(xs_all)) > 1)
    ax.set_yscale("symlog", linthresh=MEMORY_LINEAR_BELOW_MIB)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(_PLAIN)
    ax.set(xlabel="N (query length; M = N unless --kv-len)", ylabel="peak memory of one call [MiB]")
    _finish(ax, "Peak memory of one call vs N", shared,
            f"Axis linear below {MEMORY_LINEAR_BELOW_MIB:g} MiB and logarithmic above, so zero readings show. "
            "Slope: fit over the non-zero readings.")
    return _png(fig)


def time_vs_h(results: list[PointResult]):
    """Median time per call vs the number of heads H, for series with at least two H values."""
    hs = sorted({r.H for r in results if r.status == "ok"})
    if len(hs) < 2:
        return (f"No time-vs-H plot: only H = {hs[0] if hs else '?'} was swept "
                "(`--heads 2,4,8 --heads-at-n 1024` adds a curve).")
    png = _draw(results, "H", lambda r: r.time_median_s and r.time_median_s * 1e3, needs_two=True,
                error=lambda r: (r.time_iqr_s or 0) * 1e3 / 2, title="Time per call vs H",
                ylabel="median time per call [ms]", note="Bars: interquartile range of the timed calls (± IQR/2).")
    return png or "No time-vs-H plot: no series was measured ok at two H values."


def fraction_of_peak(results: list[PointResult]):
    """Fraction of the roofline (min(measured matmul peak, measured bandwidth x intensity)) vs N."""
    png = _draw(results, "N", lambda r: r.fraction_of_peak, title="Fraction of the roofline vs N",
                ylabel="achieved / attainable FLOP/s", yscale="linear", percent=True,
                note="Attainable: min(measured matmul peak, measured memory bandwidth × FLOPs per byte moved).")
    if png is None:
        return ("No plot: no point on a curve along N has a fraction of peak (the machine's peak was not measured, "
                "or the sweep ran along M: see the decode plots).")
    return png


def decode_points(results: list[PointResult]) -> list[PointResult]:
    """The records of the decode regime (a few queries against a longer cache, `records.is_decode`)."""
    return [r for r in results if is_decode(r.N, r.M)]


def decode_time_vs_m(results: list[PointResult]):
    """Median time per decode call vs the cache length M, log-log, IQR as error bars."""
    png = _draw(decode_points(results), "M", lambda r: r.time_median_s and r.time_median_s * 1e3,
                error=lambda r: (r.time_iqr_s or 0) * 1e3 / 2, title="Decode: time per call vs cache length M",
                ylabel="median time per call [ms]", needs_two=True,
                note="A memory-bound step: time should grow like M (K and V are read once). "
                     "Bars: interquartile range of the timed calls (± IQR/2).")
    return png or f"No decode plot: no series of N <= {DECODE_MAX_N} queries measured ok at two cache lengths M."


def decode_bandwidth_vs_m(results: list[PointResult]):
    """Achieved bytes/s as a fraction of the machine's measured copy bandwidth vs M (the decode roofline)."""
    png = _draw(decode_points(results), "M", lambda r: r.bandwidth_fraction, needs_two=True, yscale="linear",
                percent=True, title="Decode: fraction of the measured memory bandwidth vs cache length M",
                ylabel="achieved GB/s / measured copy GB/s",
                note=f"{DECODE_BYTES}; over the machine's measured tensor-copy bandwidth (read + write).")
    return png or "No decode plot: no decode series has a bandwidth fraction at two cache lengths M."


PLOTS = {"time_vs_n.png": time_vs_n, "memory_vs_n.png": memory_vs_n, "time_vs_h.png": time_vs_h,
         "fraction_of_peak.png": fraction_of_peak, "decode_time_vs_m.png": decode_time_vs_m,
         "decode_bandwidth_vs_m.png": decode_bandwidth_vs_m}
