"""Compare two runs point by point, without crying wolf.

- Both inputs must be run directories holding readable results (a user mistake
  is a one-line error, never "0 points compared").
- Runs measured on different machines, thread counts, torch versions or
  measurement options are refused (or, with allow_mismatch, compared under a
  loud warning): their ratios measure the difference in setup, not in code.
- The test unit is the fresh process, not the call: calls in one process share
  its allocator layout and the machine's mood, so testing them as independent
  samples (Mann-Whitney on raw samples) calls a 1.6x "regression" between two
  runs of identical code. Each point's per-process medians are compared with a
  one-sided Welch t-test on their logarithms against the threshold
  (H0: new/old <= threshold), and the p-values are Holm-corrected for the
  number of points compared.
- A point flagged noisy in either run is never called a regression.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from attnbench.reference import AttentionInputError

from . import records
from .records import PointResult
from .spec import REGRESSION_THRESHOLD

ALPHA = 0.05
MACHINE_KEYS = ("host", "device", "device_name", "cpu_model", "cpus", "torch")
OPTION_KEYS = ("threads", "time_budget_s", "min_repeats", "max_repeats", "warmup", "processes", "pin_cpus",
               "keep_freed_memory")


@dataclass(frozen=True)
class Change:
    """One matched point: new/old median ratio, the test's p-value (raw and Holm-adjusted) and the verdict.

    verdict: "REGRESSION", "faster", "" (no significant change), "noisy" (not judged: flagged in a run),
    "one process" (not judged: a run has fewer than 2 processes for it, no between-process spread).
    """

    key: str
    old_s: float
    new_s: float
    ratio: float
    p_value: float | None
    p_adjusted: float | None
    verdict: str

    @property
    def regression(self) -> bool:
        return self.verdict == "REGRESSION"


def load_run(path) -> list[PointResult]:
    """Every record of run directory `path`; AttentionInputError (one line) unless it holds at least one ok point."""
    path = Path(path)
    if not path.is_dir():
        raise AttentionInputError(f"compare: {path} is not a run directory (expected reports/run-.../)")
    results = path / "results.jsonl"
    if not results.is_file():
        raise AttentionInputError(f"compare: no results.jsonl in {path}")
    rows = records.read(results)
    duplicated = records.duplicate_keys(rows)
    if duplicated:                                               # which one is "the" measurement? refuse to pick
        raise AttentionInputError(f"compare: {results} records {len(duplicated)} points more than once "
                                  f"(e.g. {duplicated[0]}); keep one run per file")
    if not any(r.status == "ok" for r in rows):
        raise AttentionInputError(f"compare: {results} holds no measured (ok) point ({len(rows)} records)")
    return rows


def _setup(rows: list[PointResult]) -> tuple[dict, dict]:
    machine = next((r.machine for r in rows if r.machine), {})
    options = next((r.options for r in rows if r.options), {})
    return ({k: machine.get(k) for k in MACHINE_KEYS}, {k: options.get(k) for k in OPTION_KEYS})


def mismatches(old: list[PointResult], new: list[PointResult]) -> tuple[list[str], list[str]]:
    """(differences that make ratios meaningless, setup unknown in one run) between two runs' machine and options."""
    (m_old, o_old), (m_new, o_new) = _setup(old), _setup(new)
    differ, unknown = [], []
    for what, a, b in (("machine", m_old, m_new), ("options", o_old, o_new)):
        for k in a:
            if a[k] is None and b[k] is None:
                continue
            if a[k] is None or b[k] is None:
                unknown.append(f"{what} {k}: {a[k]!r} vs {b[k]!r}")
            elif a[k] != b[k]:
                differ.append(f"{what} {k}: {a[k]!r} vs {b[k]!r}")
    return differ, unknown


def slower_p(old_medians, new_medians, threshold: float) -> float | None:
    """One-sided Welch t-test p of H0 "new/old <= threshold" on log per-process medians (None: < 2 each)."""
    a, b = np.log(np.asarray(old_medians, float)), np.log(np.asarray(new_medians, float))
    if len(a) < 2 or len(b) < 2:
        return None
    excess = b.mean() - a.mean() - np.log(threshold)
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if se == 0:
        return 0.0 if excess > 0 else 1.0
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(stats.t.sf(excess / se, df))


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None; m counts the tested ones)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, adjusted, running = len(tested), list(p_values), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def _medians(r: PointResult) -> tuple[float, ...]:
    return tuple(r.process_medians_s or ())


def compare_points(pairs: list[tuple[PointResult, PointResult]], threshold: float) -> list[Change]:
    """Verdicts for matched (old, new) points, Holm-corrected over the points tested."""
    raw = [slower_p(_medians(o), _medians(n), threshold) for o, n in pairs]
    faster = [slower_p(_medians(n), _medians(o), threshold) for o, n in pairs]
    adjusted, adjusted_faster = holm(raw), holm(faster)
    changes = []
    for (o, n), p, p_adj, p_fast in zip(pairs, raw, adjusted, adjusted_faster):
        if o.noisy or n.noisy:
            verdict = "noisy"
        elif p is None:
            verdict = "one process"
        elif p_adj < ALPHA:
            verdict = "REGRESSION"
        elif p_fast is not None and p_fast < ALPHA:
            verdict = "faster"
        else:
            verdict = ""
        changes.append(Change(n.key, o.time_median_s, n.time_median_s, n.time_median_s / o.time_median_s,
                              p, p_adj, verdict))
    return changes


def compare_runs(old_dir: Path, new_dir: Path, threshold: float = REGRESSION_THRESHOLD, *,
                 allow_mismatch: bool = False) -> tuple[list[Change], list[str], list[str]]:
    """(changes for points ok in both, keys ok in only one run, warnings about the runs' setups).

    Raises AttentionInputError for an unusable input or, unless allow_mismatch, differing setups.
    """
    old_rows, new_rows = load_run(old_dir), load_run(new_dir)
    differ, unknown = mismatches(old_rows, new_rows)
    if differ and not allow_mismatch:
        raise AttentionInputError("compare: the runs were measured differently (" + "; ".join(differ) +
                                  "); rerun one, or pass --allow-mismatch to compare anyway")
    old = {r.key: r for r in old_rows if r.status == "ok"}
    new = {r.key: r for r in new_rows if r.status == "ok"}
    pairs = [(old[k], new[k]) for k in sorted(old.keys() & new.keys())]
    warnings = [f"WARNING: setups differ, ratios include it: {d}" for d in differ]
    warnings += [f"warning: setup unknown in one run: {u}" for u in unknown]
    return compare_points(pairs, threshold), sorted(old.keys() ^ new.keys()), warnings


def format_changes(changes: list[Change], unmatched: list[str], threshold: float) -> str:
    from .report import text_table

    rows = [["new/old", "p(Holm)", "old ms", "new ms", "point", "verdict"]]
    rows += [[f"{c.ratio:.3f}", "-" if c.p_adjusted is None else f"{c.p_adjusted:.3g}", f"{c.old_s * 1e3:.3f}",
              f"{c.new_s * 1e3:.3f}", c.key, c.verdict] for c in changes]
    lines = [text_table(rows)]
    if unmatched:
        lines.append(f"{len(unmatched)} points in only one run (not compared)")
    n_reg = sum(c.regression for c in changes)
    n_noisy = sum(c.verdict == "noisy" for c in changes)
    n_single = sum(c.verdict == "one process" for c in changes)
    lines.append(f"{len(changes)} points compared; {n_reg} significant regressions beyond {threshold:g}x "
                 f"(one-sided Welch t on per-process medians, Holm-corrected, alpha {ALPHA})")
    if n_noisy:
        lines.append(f"{n_noisy} points flagged noisy in a run: not judged; rerun them on a quieter machine "
                     "or use `attnbench compare --interleaved`")
    if n_single:
        lines.append(f"{n_single} points measured in one process only: not judged (no between-process spread)")
    return "\n".join(lines)
