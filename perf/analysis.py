"""Stage 5, analysis: what the records say, as rows a report renders (header first), from records alone.

In: the records of results.jsonl (records.py). Out: tables as lists of rows of strings: the fastest trusted
backend per problem size and the evidence it rests on, every point that went wrong, curves over N or H and
their fitted log-log slopes, the noisy points. report.py renders them for the terminal, markdown and HTML.

`attnbench perf` and `attnbench run` exit non-zero when a point errored, was implausible or inaccurate
(`failing`); oom and timeout points are listed but are what a memory cap and a timeout are for. A point whose
timed calls returned memory the caller still held (or an input's) and a point far faster than every trusted
peer are listed as "suspicious: look" (integrity.py).
"""
from __future__ import annotations

from collections import defaultdict

from .integrity import SUSPICIOUS_SPEEDUP
from .records import PointResult
from .stats import loglog_slope


def series_label(r: PointResult, *, vary: str = "N") -> str:
    """A curve's name: backend, pass and every fixed dimension except the varied one."""
    fixed = {"N": f"H{r.H}", "H": f"N{r.N}"}[vary]
    return f"{r.backend} {r.pass_} {r.dtype} B{r.B} {fixed} D{r.D}" + (f" {r.causal}" if r.causal else "")


def curves(results: list[PointResult], vary: str = "N") -> dict[str, list[PointResult]]:
    """Measured (non-skipped) records grouped into curves over `vary` ("N" or "H"), sorted along it."""
    groups: dict[str, list[PointResult]] = defaultdict(list)
    for r in results:
        if r.status != "skipped":
            groups[series_label(r, vary=vary)].append(r)
    return {k: sorted(v, key=lambda r: getattr(r, vary)) for k, v in sorted(groups.items())
            if len({getattr(r, vary) for r in v}) > 1}


def slopes(results: list[PointResult]) -> list[dict]:
    """Per N-curve: fitted log-log slope of time and of peak memory vs N, largest N ok, first N not ok."""
    rows = []
    for label, points in curves(results, "N").items():
        ok = [r for r in points if r.status == "ok"]
        failed = [r for r in points if r.status != "ok"]
        rows.append({
            "series": label,
            "time_slope": loglog_slope([r.N for r in ok], [r.time_median_s for r in ok]),
            "memory_slope": loglog_slope([r.N for r in ok], [r.peak_bytes for r in ok]),
            "largest_ok_N": max((r.N for r in ok), default=None),
            "first_failure": (f"{failed[0].status} at N={failed[0].N}" if failed else ""),
        })
    return rows


def noisy_table(results: list[PointResult]) -> list[list[str]]:
    """Rows (header first) of the points flagged noisy, with why and the load around them."""
    rows = [["backend", "pass", "N", "median ms", "why", "load 1 min", "attempts"]]
    for r in results:
        if r.status == "ok" and r.noisy:
            n = r.noise or {}
            load = n.get("load1_after")
            rows.append([r.backend, r.pass_, str(r.N), f"{r.time_median_s * 1e3:.3g}", "; ".join(n.get("reasons", [])),
                         "-" if load is None else f"{load:.2f}", str(n.get("attempts", "-"))])
    return rows


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
