"""Stage 5, analysis across runs: `attnbench compare`, two runs point by point or two backends interleaved, as
regressions, without crying wolf. In: two run directories' records (records.py), or the per-process samples of
interleaved pairs (worker.run_pair). Out: per point the ratio, its p-value and a verdict (stats.py's tests).

Two runs:

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

Interleaved A/B (`compare --interleaved`): two backends (or two installs of one, registered under two names)
timed alternately. On a shared machine the absolute time of a call drifts with everything else running, but two
calls made microseconds apart in the same worker see the same machine: the ratio of adjacent calls is stable
where each time is not. So the regression gate times A and B in one worker, alternating (ABBA order, so neither
always runs second; measure.measure_pair), takes the median of the per-pair ratios B/A per process, and repeats
that in `options.processes` fresh processes. The verdict is a one-sided t-test on the log ratios over processes
(H0: B/A <= threshold), Holm-corrected over the points compared.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnbench.reference import AttentionInputError

from . import records
from .records import PointResult
from .spec import REGRESSION_THRESHOLD
from .stats import ALPHA, holm, log_t_interval, ratio_p, slower_p

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


def significance(p_slower: float | None, p_faster: float | None) -> str:
    """The verdict of a point's Holm-adjusted one-sided p-values: "REGRESSION", "faster" or "" (neither)."""
    if p_slower is not None and p_slower < ALPHA:
        return "REGRESSION"
    return "faster" if p_faster is not None and p_faster < ALPHA else ""


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
        else:
            verdict = significance(p_adj, p_fast)
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


@dataclass(frozen=True)
class PairResult:
    """One point of an A/B comparison: B/A ratio (median over processes), its 95% interval, the verdict."""

    key: str
    ratio: float
    interval: tuple[float, float] | None
    process_ratios: tuple[float, ...]
    a_s: float
    b_s: float
    p_value: float | None = None
    p_adjusted: float | None = None
    verdict: str = ""

    @property
    def regression(self) -> bool:
        return self.verdict == "REGRESSION"


def pair_result(key: str, runs: list[dict]) -> PairResult:
    """The point's ratio B/A from per-process {samples_a, samples_b} (pairs matched by index)."""
    ratios = [float(np.median(np.asarray(r["samples_b"]) / np.asarray(r["samples_a"]))) for r in runs]
    return PairResult(key, float(np.median(ratios)), log_t_interval(ratios), tuple(ratios),
                      float(np.median([s for r in runs for s in r["samples_a"]])),
                      float(np.median([s for r in runs for s in r["samples_b"]])))


def judge(results: list[PairResult], threshold: float) -> list[PairResult]:
    """Verdicts, Holm-corrected over the points: REGRESSION, faster, or "" (no significant change).

    No separate noisy verdict: the t-test already weighs the spread of the process ratios, and the
    ratio of adjacent calls is what stays stable on a loaded machine.
    """
    raw = [ratio_p(r.process_ratios, threshold) for r in results]
    fast = [ratio_p([1 / x for x in r.process_ratios], threshold) for r in results]
    judged = []
    for r, p, p_adj, p_fast in zip(results, raw, holm(raw), holm(fast)):
        judged.append(dataclasses.replace(r, p_value=p, p_adjusted=p_adj, verdict=significance(p_adj, p_fast)))
    return judged


def format_pairs(results: list[PairResult], a: str, b: str, threshold: float) -> str:
    from .report import text_table

    rows = [["B/A", "95% interval", "p(Holm)", "A ms", "B ms", "point", "verdict"]]
    rows += [[f"{r.ratio:.3f}", "-" if r.interval is None else f"{r.interval[0]:.3f}-{r.interval[1]:.3f}",
              "-" if r.p_adjusted is None else f"{r.p_adjusted:.3g}", f"{r.a_s * 1e3:.3f}", f"{r.b_s * 1e3:.3f}",
              r.key, r.verdict] for r in results]
    lines = [f"interleaved A/B in one worker per process: A = {a}, B = {b}", text_table(rows)]
    n_reg = sum(r.regression for r in results)
    lines.append(f"{len(results)} points compared; {n_reg} significant regressions of B beyond {threshold:g}x "
                 f"(one-sided t on per-process log ratios, Holm-corrected, alpha {ALPHA})")
    return "\n".join(lines)
