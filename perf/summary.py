"""The end-of-sweep summary: per problem size the fastest accurate backend, then every point that went wrong.

`attnbench perf` and `attnbench run` print it and exit non-zero when it has an
error or an inaccurate point (`failing`); oom and timeout points are listed but
are what a memory cap and a timeout are for.
"""
from __future__ import annotations

from collections import defaultdict

from .records import PointResult


def _size(r: PointResult) -> tuple:
    return (r.pass_, r.dtype, r.causal or "-", r.B, r.H, r.D, r.N, r.M)


def problems(results: list[PointResult]) -> list[PointResult]:
    """Points that did not give an accurate measurement: error, oom, timeout, or ok but inaccurate."""
    return [r for r in results if r.status in ("error", "oom", "timeout") or (r.status == "ok" and r.accurate is False)]


def failing(results: list[PointResult]) -> list[PointResult]:
    """The points that make a sweep exit non-zero: a crash or a wrong answer."""
    return [r for r in results if r.status == "error" or (r.status == "ok" and r.accurate is False)]


def verdict(r: PointResult) -> str:
    return "inaccurate" if r.status == "ok" else r.status


def fastest_rows(results: list[PointResult]) -> list[list[str]]:
    """[pass, dtype, causal, B, H, D, N, fastest accurate backend, ms, runner-up] per problem size."""
    groups: dict[tuple, list[PointResult]] = defaultdict(list)
    for r in results:
        if r.status == "ok" and r.accurate:
            groups[_size(r)].append(r)
    rows = [["pass", "dtype", "causal", "B", "H", "D", "N", "fastest accurate", "ms", "next (x slower)"]]
    for size in sorted(groups):
        ranked = sorted(groups[size], key=lambda r: r.time_median_s)
        best = ranked[0]
        nxt = (f"{ranked[1].backend} ({ranked[1].time_median_s / best.time_median_s:.2f}x)"
               if len(ranked) > 1 else "-")
        rows.append([*map(str, size[:7]), best.backend, f"{best.time_median_s * 1e3:.3g}", nxt])
    return rows


def problem_rows(results: list[PointResult]) -> list[list[str]]:
    rows = [["backend", "pass", "dtype", "N", "status", "detail"]]
    for r in problems(results):
        detail = r.message if r.status != "ok" else f"max err {r.error_vs_ref:.2e} outside the error budget"
        rows.append([r.backend, r.pass_, r.dtype, str(r.N), verdict(r), detail])
    return rows


def _text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def format_summary(results: list[PointResult]) -> str:
    """The console summary printed after a sweep."""
    fastest, bad = fastest_rows(results), problem_rows(results)
    parts = [_text_table(fastest) if len(fastest) > 1 else "no accurate point was measured"]
    if len(bad) > 1:
        parts.append(f"{len(bad) - 1} points inaccurate or failed:\n" + _text_table(bad))
    else:
        parts.append("every measured point is accurate; no error, oom or timeout")
    return "\n\n".join(parts)
