"""Interleaved A/B: two backends (or two installs of one, registered under two names) timed alternately.

On a shared machine the absolute time of a call drifts with everything else
running, but two calls made microseconds apart in the same worker see the same
machine: the ratio of adjacent calls is stable where each time is not. So the
regression gate times A and B in one worker, alternating (ABBA order, so
neither always runs second), takes the median of the per-pair ratios B/A per
process, and repeats that in `options.processes` fresh processes. The verdict
is a one-sided t-test on the log ratios over processes (H0: B/A <= threshold),
Holm-corrected over the points compared.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .compare import ALPHA, holm
from .stats import log_t_interval


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


def ratio_p(process_ratios, threshold: float) -> float | None:
    """One-sided one-sample t-test p of H0 "B/A <= threshold" on the log per-process ratios (None: < 2)."""
    x = np.log(np.asarray(process_ratios, float))
    if len(x) < 2:
        return None
    excess, se = x.mean() - np.log(threshold), x.std(ddof=1) / np.sqrt(len(x))
    if se == 0:
        return 0.0 if excess > 0 else 1.0
    return float(stats.t.sf(excess / se, len(x) - 1))


def judge(results: list[PairResult], threshold: float) -> list[PairResult]:
    """Verdicts, Holm-corrected over the points: REGRESSION, faster, or "" (no significant change).

    No separate noisy verdict: the t-test already weighs the spread of the process ratios, and the
    ratio of adjacent calls is what stays stable on a loaded machine.
    """
    raw = [ratio_p(r.process_ratios, threshold) for r in results]
    fast = [ratio_p([1 / x for x in r.process_ratios], threshold) for r in results]
    judged = []
    for r, p, p_adj, p_fast in zip(results, raw, holm(raw), holm(fast)):
        if p_adj is not None and p_adj < ALPHA:
            verdict = "REGRESSION"
        elif p_fast is not None and p_fast < ALPHA:
            verdict = "faster"
        else:
            verdict = ""
        judged.append(dataclasses.replace(r, p_value=p, p_adjusted=p_adj, verdict=verdict))
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
