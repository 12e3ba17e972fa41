"""Summaries computed from records alone: curves over N or H, fitted log-log slopes, largest N reached."""
from __future__ import annotations

from collections import defaultdict

from .stats import loglog_slope
from .records import PointResult


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
