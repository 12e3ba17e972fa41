"""The end-of-sweep summary: per problem size the fastest trusted backend, then every point that went wrong.

`attnbench perf` and `attnbench run` print it and exit non-zero when it has an
error, an implausible or an inaccurate point (`failing`); oom and timeout points
are listed but are what a memory cap and a timeout are for. A point whose timed
calls returned memory the caller still held (or an input's) and a point far
faster than every trusted peer are listed as "suspicious: look" (integrity.py).
"""
from __future__ import annotations

from collections import defaultdict

from .integrity import SUSPICIOUS_SPEEDUP
from .records import PointResult


def _size(r: PointResult) -> tuple:
    return (r.pass_, r.dtype, r.causal or "-", r.B, r.H, r.D, r.N, r.M)


def storage_warning(r: PointResult) -> str | None:
    """What the timed calls' output storage showed (integrity.TimedCalls): memory the caller still held, or an
    input's memory; None if neither."""
    i = r.integrity or {}
    return "; ".join(filter(None, [i.get("reused_storage"), i.get("aliases_input")])) or None


def trusted(r: PointResult) -> bool:
    """Measured, accurate on its first and timed calls, within the roofline, outputs in fresh memory."""
    return r.status == "ok" and r.accurate is True and storage_warning(r) is None


def problems(results: list[PointResult]) -> list[PointResult]:
    """Points that did not give a trustworthy measurement, implausible first: implausible, error, oom, timeout,
    ok but inaccurate, ok but returning held or input memory."""
    bad = [r for r in results if r.status in ("implausible", "error", "oom", "timeout")
           or (r.status == "ok" and not trusted(r))]
    return sorted(bad, key=lambda r: r.status != "implausible")


def failing(results: list[PointResult]) -> list[PointResult]:
    """The points that make a sweep exit non-zero: a crash, a wrong answer or an impossible time."""
    return [r for r in results if r.status in ("error", "implausible") or (r.status == "ok" and r.accurate is False)]


def verdict(r: PointResult) -> str:
    if r.status != "ok":
        return r.status
    return "inaccurate" if r.accurate is False else "suspicious: look"


def _ranked(results: list[PointResult]) -> dict[tuple, list[PointResult]]:
    """Trusted points per problem size, fastest first."""
    groups: dict[tuple, list[PointResult]] = defaultdict(list)
    for r in results:
        if trusted(r):
            groups[_size(r)].append(r)
    return {size: sorted(group, key=lambda r: r.time_median_s) for size, group in groups.items()}


def suspicious(results: list[PointResult]) -> dict[str, str]:
    """{key: why} of the points more than SUSPICIOUS_SPEEDUP x faster than the fastest trusted peer of their size
    (only a size's fastest can be)."""
    out = {}
    for ranked in _ranked(results).values():
        if len(ranked) > 1 and ranked[1].time_median_s > SUSPICIOUS_SPEEDUP * ranked[0].time_median_s:
            out[ranked[0].key] = (f"suspicious: look: {ranked[1].time_median_s / ranked[0].time_median_s:.0f}x "
                                  f"faster than {ranked[1].backend} (more than {SUSPICIOUS_SPEEDUP:g}x)")
    return out


def evidence(ranked: list[PointResult]) -> str:
    """Whether a size's ranking rests on noisy points: the fastest's, the runner-up's, both, or neither."""
    noisy = [bool(r.noisy) for r in ranked[:2]]
    if not any(noisy):
        return "clean"
    return "noisy: " + ("both" if all(noisy) and len(noisy) == 2 else "fastest" if noisy[0] else "next")


def fastest_rows(results: list[PointResult]) -> list[list[str]]:
    """[pass, dtype, causal, B, H, D, N, fastest accurate backend, ms, runner-up, evidence] per problem size,
    among trusted points (an implausible, inaccurate or storage-flagged point is never ranked); evidence says
    when the ranking rests on points flagged noisy."""
    marked = suspicious(results)
    rows = [["pass", "dtype", "causal", "B", "H", "D", "N", "fastest accurate", "ms", "next (x slower)", "evidence"]]
    for size, ranked in sorted(_ranked(results).items()):
        best = ranked[0]
        nxt = (f"{ranked[1].backend} ({ranked[1].time_median_s / best.time_median_s:.2f}x)"
               if len(ranked) > 1 else "-")
        name = best.backend + (f" ({marked[best.key]})" if best.key in marked else "")
        n, m = size[6], size[7]                  # M shown where it is not N (a decode sweep: N fixed, M swept)
        rows.append([*map(str, size[:6]), str(n) if n == m else f"{n}, M {m}", name, f"{best.time_median_s * 1e3:.3g}",
                     nxt, evidence(ranked)])
    return rows


def problem_rows(results: list[PointResult]) -> list[list[str]]:
    """[backend, pass, dtype, N, status, why] of every problem point (implausible first), then every suspicious one."""
    rows = [["backend", "pass", "dtype", "N", "status", "detail"]]
    for r in problems(results):
        wrong = f"max err {r.error_vs_ref:.2e} outside the error budget" if r.accurate is False else None
        detail = "; ".join(filter(None, [r.message or wrong, storage_warning(r)]))
        rows.append([r.backend, r.pass_, r.dtype, str(r.N), verdict(r), detail])
    marked = suspicious(results)
    rows += [[r.backend, r.pass_, r.dtype, str(r.N), "suspicious: look", marked[r.key]]
             for r in results if r.key in marked]
    return rows


def _text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def format_summary(results: list[PointResult]) -> str:
    """The console summary printed after a sweep."""
    fastest, bad = fastest_rows(results), problem_rows(results)
    parts = [_text_table(fastest) if len(fastest) > 1 else "no accurate point was measured"]
    noisy = sum(bool(r.noisy) for r in results if r.status == "ok")
    if noisy:
        parts.append(f"{noisy} of {len(results)} points flagged noisy (the evidence column): their ranking is a "
                     "hint, not a measurement; re-run on a quiet machine or gate with `compare --interleaved`")
    if len(bad) > 1:
        parts.append(f"{len(bad) - 1} points implausible, inaccurate, suspicious or failed:\n" + _text_table(bad))
    else:
        parts.append("every measured point is accurate and plausible; no error, oom or timeout")
    return "\n\n".join(parts)
