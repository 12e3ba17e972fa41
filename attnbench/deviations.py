"""Known deviations: measured inaccuracies of third-party kernels, declared instead of hidden or budgeted away.

A `KnownDeviation` names a backend, a device, a problem class and the tensors affected, the worst ratio
max error / naive error measured across the FlashAttention grid (`conformance/flash_grid.py`), the evidence,
and a witness problem on which it shows. `judge` re-labels a verdict that fails only the 2x-naive rule, inside
its class, at no more than the declared ratio, as `known deviation` (passed, and reported as such); beyond
the ratio it still fails, and the budget itself is unchanged for every other backend and class.
`conformance/test_known_deviations.py` fails when a deviation disappears (its witness meets the 2x rule again:
delete the entry) or grows past its ratio.

    KNOWN_DEVIATIONS                          every declared entry (the perf report can list them)
    deviations_for(backend, device)           the entries of one backend on one device
    judge(backend, device, problem, verdicts, backward=...) -> (verdicts, [notes])
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from attnbench.budget import NAIVE_MULTIPLE, Verdict
from attnbench.problem import Problem


@dataclass(frozen=True)
class KnownDeviation:
    """One declared inaccuracy of one backend on one device, for one class of problems."""

    name: str
    backend: str
    device: str
    problem_class: str                     # in words, for the report
    applies: Callable[[Problem, bool], bool]   # (problem, backward) -> inside the class
    tensors: tuple[str, ...]               # verdict names affected ("dk", "dv", "output", ...)
    declared_ratio: float                  # worst max error / naive error measured (see evidence)
    evidence: str
    witness: str                           # a Problem spec on which the 2x-naive rule fails today

    def describe(self) -> str:
        return (f"{self.backend} on {self.device}, {self.problem_class}: {'/'.join(self.tensors)} up to "
                f"{self.declared_ratio:g}x the naive error ({self.name})")


def _half_gqa_backward(problem: Problem, backward: bool) -> bool:
    return backward and problem.Hkv < problem.H and problem.dtype in ("float16", "bfloat16")


KNOWN_DEVIATIONS: tuple[KnownDeviation, ...] = (
    KnownDeviation(
        name="sdpa_flash_cpu_gqa_backward",
        backend="torch_sdpa_flash",
        device="cpu",
        problem_class="backward, grouped/multi-query heads (Hkv < H), float16/bfloat16",
        applies=_half_gqa_backward,
        tensors=("dk", "dv"),
        declared_ratio=2.7,
        evidence=(
            "torch 2.13 CPU flash backward with enable_gqa, FlashAttention grid (seed 0), the 192 GQA/MQA "
            "problems with N, M <= 256: dK/dV error median 1.25x, max 2.69x the naive same-dtype error (MQA "
            "worst; GQA max 2.00x). The same kernel called on K/V heads repeated by hand (autograd sums the "
            "copies) on the same problems: median 0.70x, max 1.51x. dQ is unaffected (identical either way). "
            "So the GQA path's reduction of dK/dV over the query heads of a group loses precision, "
            "consistent with summing per-head gradients in the half dtype. Scan: /work/notes/i10budget.md."),
        witness="B=1,H=6,Hkv=1,N=108,M=256,D=59,dtype=float16,causal=bottom_right",   # dV 2.63x, expanded 0.84x
    ),
)


def deviations_for(backend: str, device: str) -> list[KnownDeviation]:
    """The declared deviations of `backend` on `device`."""
    return [d for d in KNOWN_DEVIATIONS if d.backend == backend and d.device == device]


def _only_naive_failed(verdict: Verdict) -> bool:
    """Failed the 2x-naive rule and nothing else (condition 1, shape and NaN placement still hold)."""
    return (not verdict.passed and verdict.naive_error is not None
            and verdict.reason.startswith(f"worse than {NAIVE_MULTIPLE:g}x the naive") and ";" not in verdict.reason)


def judge(backend: str, device: str, problem: Problem, verdicts: list[Verdict], *,
          backward: bool) -> tuple[list[Verdict], list[str]]:
    """Verdicts with declared deviations re-labelled, and one note per verdict re-labelled.

    Inside a declared class (backend, device, problem class, tensor), a verdict that failed the 2x-naive rule
    alone is re-labelled passed ("known deviation ...") if max error / naive error <= the declared ratio, and
    stays failed, saying by how much the deviation grew, if it is larger. A verdict the budget passes (its floor
    can exceed 2x a tiny naive error) and every verdict outside a declared class are returned unchanged.
    """
    judged, notes = [], []
    for verdict in verdicts:
        entry = next((d for d in deviations_for(backend, device)
                      if verdict.name in d.tensors and d.applies(problem, backward)), None)
        if entry is None or not _only_naive_failed(verdict) or not verdict.naive_error:
            judged.append(verdict)
            continue
        ratio = verdict.max_error / verdict.naive_error
        if ratio > entry.declared_ratio:
            judged.append(replace(verdict, reason=f"{verdict.reason}; {ratio:.3g}x naive exceeds known deviation "
                                                  f"{entry.name} (declared {entry.declared_ratio:g}x)"))
            continue
        judged.append(replace(verdict, passed=True, reason=f"known deviation {entry.name}: {ratio:.3g}x naive "
                                                           f"(declared up to {entry.declared_ratio:g}x)"))
        notes.append(f"{backend} {verdict.name} on {problem.id}: {ratio:.3g}x naive, known deviation "
                     f"{entry.name} ({entry.problem_class}, declared up to {entry.declared_ratio:g}x)")
    return judged, notes
