"""Compare two runs point by point: time ratios, Mann-Whitney U on the raw samples, regressions flagged."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scipy.stats import mannwhitneyu

from attnbench.reference import AttentionInputError

from . import records
from .records import PointResult

ALPHA = 0.05


@dataclass(frozen=True)
class Change:
    """One matched point: new/old median time ratio and the two-sided Mann-Whitney p-value of the samples."""

    key: str
    old_s: float
    new_s: float
    ratio: float
    p_value: float | None
    significant: bool
    regression: bool


def _results(path: Path) -> dict[str, PointResult]:
    path = Path(path)
    path = path / "results.jsonl" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no results at {path}")
    results = records.read(path)
    duplicated = records.duplicate_keys(results)
    if duplicated:                                               # which one is "the" measurement? refuse to pick
        raise AttentionInputError(f"compare: {path} records {len(duplicated)} points more than once "
                                  f"(e.g. {duplicated[0]}); keep one run per file")
    return {r.key: r for r in results if r.status == "ok"}


def compare_points(old: PointResult, new: PointResult, threshold: float) -> Change:
    """A regression: slower by more than `threshold`x and significant at ALPHA (p None: too few samples)."""
    ratio = new.time_median_s / old.time_median_s
    p = None
    if len(old.samples) >= 2 and len(new.samples) >= 2 and set(old.samples) != set(new.samples):
        p = float(mannwhitneyu(old.samples, new.samples, alternative="two-sided").pvalue)
    significant = p is not None and p < ALPHA
    return Change(new.key, old.time_median_s, new.time_median_s, ratio, p, significant,
                  significant and ratio > threshold)


def compare_runs(old_dir: Path, new_dir: Path, threshold: float = 1.10) -> tuple[list[Change], list[str]]:
    """(changes for points present and ok in both, keys present in only one run)."""
    old, new = _results(old_dir), _results(new_dir)
    changes = [compare_points(old[k], new[k], threshold) for k in sorted(old.keys() & new.keys())]
    return changes, sorted(old.keys() ^ new.keys())


def format_changes(changes: list[Change], unmatched: list[str], threshold: float) -> str:
    lines = [f"{'new/old':>8} {'p':>8}  {'old ms':>9} {'new ms':>9}  point"]
    for c in changes:
        flag = "REGRESSION" if c.regression else ("faster" if c.significant and c.ratio < 1 / threshold else "")
        p = "-" if c.p_value is None else f"{c.p_value:.3g}"
        lines.append(f"{c.ratio:>8.3f} {p:>8}  {c.old_s * 1e3:>9.3f} {c.new_s * 1e3:>9.3f}  {c.key}  {flag}")
    if unmatched:
        lines.append(f"{len(unmatched)} points in only one run (not compared)")
    n_reg = sum(c.regression for c in changes)
    lines.append(f"{len(changes)} points compared; {n_reg} significant regressions beyond {threshold:g}x")
    return "\n".join(lines)
